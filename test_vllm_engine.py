"""
vllm_engine.py, without vLLM: a stand-in `vllm` module with vLLM 0.33.0's signatures and the state
rules the adapter relies on (sleep discards the weights, generation needs every tag awake, weights
load only into awake memory) runs GFPO for a few steps, and gives the rollouts, rewards,
advantages, losses and final weights of the local engine, in one process and on two gloo ranks
(FSDP2, with one engine per rank and with one engine over both: --vllm-tp 2). The weights the
engine receives after a step are the trained model's, in HF names, every one once; a missing vLLM
is a one-line error that writes nothing.

What only a GPU with vLLM shows (bench/gpu.sh runs it where vLLM is installed): vLLM's own sampler
and kernels, its memory in sleep mode, and that its external launcher shares torchrun's ranks.

    python -m pytest -q test_vllm_engine.py
"""
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import pytest
import torch

import gfpo
import ssft
from conftest import CPU_ENV, ROOT, TINY_RUN, TORCHRUN, read_metrics
import plan
from distributed import World
from flags import UserError, parse_flags
from model import Config, Qwen2
from tasks import SyntheticTask
from vllm_engine import default_memory

SMALL = ["--steps", "3", "--batch", "4", "--group", "4", "--train-questions", "48", "--eval-questions", "0",
         "--max-new", "40", "--lr", "1e-3"]

# -------------------------------------------------------------------------------------------------
# The stand-in: vLLM 0.33.0's signatures (vllm/entrypoints/llm.py, vllm/sampling_params.py,
# vllm/inputs/llm.py, vllm/outputs.py, vllm/v1/worker/gpu_worker.py and gpu_model_runner.py), with
# our model inside.

# The EngineArgs fields LLM(**kwargs) passes on that the adapter uses (vllm/engine/arg_utils.py).
ENGINE_ARGS = {"max_model_len", "max_num_seqs", "enable_sleep_mode", "load_format", "distributed_executor_backend",
               "enable_prefix_caching", "disable_log_stats"}
TAGS = ("weights", "kv_cache", "scheduling")


@dataclass
class SamplingParams:  # a msgspec.Struct in vLLM: unknown keywords fail
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list | None = None
    stop_token_ids: list | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True


class TokensPrompt(TypedDict):
    prompt_token_ids: list


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list
    cumulative_logprob: float | None
    logprobs: list | None
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list
    outputs: list
    finished: bool = True


class Worker:
    """The worker of an in-process engine (external launcher): its model and reload_weights."""

    def __init__(self, model, dtype):
        self.model, self.dtype, self.received = model, dtype, []

    def reload_weights(self, weights_iterator=None, weights_path=None, is_checkpoint_format=True):
        assert weights_iterator is not None and weights_path is None and is_checkpoint_format
        expected, got = self.model.checkpoint_tensors(), {}
        for name, tensor in weights_iterator:  # vLLM's load_weights: HF names, each once
            assert name in expected and name not in got, name
            assert tensor.shape == expected[name].shape and tensor.dtype == self.dtype, name
            got[name] = tensor.detach().clone()
        assert got.keys() == expected.keys()  # a weight left out would keep its dummy (or discarded) value
        self.model.load_state_dict(got, strict=False)
        self.model.tie_weights()
        self.received.append(got)


class LLM:
    """vLLM 0.33.0's LLM as the adapter uses it; `calls` records what it was asked, in order."""
    engines = []  # every engine made, for the tests to look into

    def __init__(self, model, *, runner="auto", convert="auto", tokenizer=None, tokenizer_mode="auto",
                 skip_tokenizer_init=False, trust_remote_code=False, allowed_local_media_path="",
                 allowed_media_domains=None, tensor_parallel_size=1, dtype="auto", quantization=None,
                 revision=None, tokenizer_revision=None, chat_template=None, seed=0, gpu_memory_utilization=0.92,
                 cpu_offload_gb=0, offload_group_size=0, offload_num_in_group=1, offload_prefetch_step=1,
                 offload_params=None, enforce_eager=False, enable_return_routed_experts=False,
                 return_sampling_mask=False, disable_custom_all_reduce=False, hf_token=None, hf_overrides=None,
                 mm_processor_kwargs=None, pooler_config=None, structured_outputs_config=None, profiler_config=None,
                 attention_config=None, kv_cache_memory_bytes=None, compilation_config=None, quantization_config=None,
                 logits_processors=None, spec_method=None, spec_model=None, spec_tokens=None, **kwargs):
        assert set(kwargs) <= ENGINE_ARGS, set(kwargs) - ENGINE_ARGS
        assert kwargs.get("distributed_executor_backend") == "external_launcher"
        import os
        assert os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"  # the external launcher's assertion
        config = Config.from_json(Path(model) / "config.json")
        assert kwargs.get("load_format") == "dummy"  # random weights: only a sync makes them the model's
        self.dtype = getattr(torch, dtype)
        self.max_num_seqs, self.max_model_len = kwargs["max_num_seqs"], kwargs["max_model_len"]
        self.sleep_mode, self.asleep = kwargs.get("enable_sleep_mode", False), set()
        self.tp, self.calls = tensor_parallel_size, [("init",)]
        torch.manual_seed(1234)
        device = "cuda" if torch.cuda.is_available() else "cpu"  # where vLLM would run, and the trainer
        self.worker = Worker(Qwen2(config).to(device, self.dtype).eval(), self.dtype)
        LLM.engines.append(self)

    def sleep(self, level=1, mode="abort"):
        assert self.sleep_mode and level in (0, 1, 2)
        self.calls.append(("sleep", level))
        if level == 2:  # the weights' memory is released: whatever it held is gone
            for p in self.worker.model.parameters():
                p.data.fill_(float("nan"))
        self.asleep |= {"scheduling"} if level == 0 else {"weights", "kv_cache"}

    def wake_up(self, tags=None):
        assert tags is None or set(tags) <= set(TAGS)
        self.calls.append(("wake_up", tuple(tags or TAGS)))
        self.asleep -= set(tags or TAGS)
        return not self.asleep

    def reset_prefix_cache(self, reset_running_requests=False, reset_connector=False):
        self.calls.append(("reset_prefix_cache",))
        return True

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        assert "weights" not in self.asleep, "weights loaded into released memory"
        self.calls.append(("collective_rpc", method))
        return [getattr(self.worker, method)(*args, **(kwargs or {}))]

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None,
                 tokenization_kwargs=None, mm_processor_kwargs=None):
        assert not self.asleep, f"generate while {self.asleep} asleep"
        params = list(sampling_params) if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        assert len(params) == len(prompts)
        self.calls.append(("generate", len(prompts)))
        out = []
        for s in range(0, len(prompts), self.max_num_seqs):  # the sequences in flight at once
            chunk, ps = prompts[s:s + self.max_num_seqs], params[s:s + self.max_num_seqs]
            p = ps[0]
            assert all((q.temperature, q.top_p, q.max_tokens, q.stop_token_ids) ==
                       (p.temperature, p.top_p, p.max_tokens, p.stop_token_ids) for q in ps)
            assert p.ignore_eos and p.n == 1 and not p.detokenize and all(q.seed is not None for q in ps)
            rows = [c["prompt_token_ids"] for c in chunk]
            assert max(map(len, rows)) + p.max_tokens <= self.max_model_len
            gen = self.worker.model.generate(rows, p.max_tokens, p.temperature, p.top_p, p.stop_token_ids,
                                             generators=[torch.Generator().manual_seed(q.seed) for q in ps])
            out += [RequestOutput(str(s + k), None, row, [CompletionOutput(0, "", ids, None, None)])
                    for k, (row, ids) in enumerate(zip(rows, gen))]
        return out


def fake_vllm():
    """The stand-in as a module named vllm."""
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams, module.TokensPrompt = LLM, SamplingParams, TokensPrompt
    module.__version__ = "0.33.0 (stand-in)"
    return module


# -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ssft_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ssft")
    ssft.main([*TINY_RUN, "--steps", "20", "--out", str(out), "--export-dtype", "float32"])
    return out


@pytest.fixture
def vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm())
    LLM.engines.clear()
    return sys.modules["vllm"]


ROLLOUTS = gfpo.rollouts


def parity(self, response, q):
    """The reward of these runs: the tiny model answers nothing right, and a constant reward would
    move no weight. The parity of the answer's length differs within groups."""
    return float(len(response) % 2)


def run(ssft_run, out, monkeypatch, *flags):
    """gfpo.train on the tiny SSFT model, rewarded by parity; its metrics and every step's Rollouts."""
    seen = []
    monkeypatch.setattr(gfpo, "rollouts", lambda *a: seen.append(ROLLOUTS(*a)) or seen[-1])
    monkeypatch.setattr(SyntheticTask, "grade", parity)
    gfpo.train(*parse_flags(gfpo.GFPOConfig, ["--model", str(ssft_run), *SMALL, "--out", str(out), *flags]))
    return read_metrics(out), seen


def same_rollouts(a, b):
    assert a.qs == b.qs and torch.equal(a.forks, b.forks) and torch.equal(a.logp_old, b.logp_old)
    assert a.tag_ids == b.tag_ids and a.generated == b.generated
    assert np.array_equal(a.rewards, b.rewards) and np.array_equal(a.advantages, b.advantages)


def test_gfpo_on_the_vllm_adapter_equals_the_local_engine(ssft_run, tmp_path, monkeypatch, vllm):
    local, ro_local = run(ssft_run, tmp_path / "local", monkeypatch)
    engine, ro_engine = run(ssft_run, tmp_path / "vllm", monkeypatch, "--rollouts", "vllm")
    assert len(ro_local) == len(ro_engine) == 3
    for a, b in zip(ro_local, ro_engine):
        same_rollouts(a, b)
    assert any(len(set(map(tuple, row))) > 1 for ro in ro_engine for row in ro.generated)  # sampled, not constant
    assert any(ro.kept.any() for ro in ro_engine)  # some steps learned something, so the weights moved
    for a, b in zip(local, engine):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"] and a["reward"] == b["reward"]
    final = [Qwen2.from_pretrained(tmp_path / name / "model") for name in ("local", "vllm")]
    for (n, x), y in zip(final[0].state_dict().items(), final[1].state_dict().values()):
        assert torch.equal(x, y), n
    # the adapter's calls: asleep from the start; each step wakes the weights, loads them, wakes the
    # KV cache, generates every rollout of the step at once, and sleeps
    (llm,) = LLM.engines
    step = [("wake_up", ("weights",)), ("collective_rpc", "reload_weights"), ("reset_prefix_cache",),
            ("wake_up", ("kv_cache",)), ("generate", 4 * 4), ("sleep", 2)]
    assert llm.calls == [("init",), ("sleep", 2), *step * 3]


def test_the_engine_receives_the_trained_weights(ssft_run, tmp_path, monkeypatch, vllm):
    """Step 1's rollouts read the SSFT model; a run resumed after step 1 (a new engine) reads the
    weights of step 1's update, as its checkpoint holds them; every tensor in HF names, once."""
    out, flags = tmp_path / "vllm", ["--rollouts", "vllm", "--steps", "2"]
    run(ssft_run, out, monkeypatch, *flags, "--stop-after", "1")
    from checkpoint import export_checkpoint
    export_checkpoint(out / "checkpoint", tmp_path / "after1", dtype=torch.float32)
    run(ssft_run, out, monkeypatch, *flags, "--resume")
    (first,), (second,) = [llm.worker.received for llm in LLM.engines]
    start = Qwen2.from_pretrained(ssft_run / "model").checkpoint_tensors()
    after1 = Qwen2.from_pretrained(tmp_path / "after1").checkpoint_tensors()
    assert first.keys() == second.keys() == start.keys()
    assert all(torch.equal(first[n], t) for n, t in start.items())
    assert all(torch.equal(second[n], t) for n, t in after1.items())
    assert any(not torch.equal(first[n], second[n]) for n in start)  # the update moved them


def test_two_gloo_ranks_with_one_engine_each_and_one_over_both(ssft_run, tmp_path):
    """FSDP2 on two ranks: the weights stream from the shards; --vllm-tp 2 pools both ranks' jobs."""
    runs = {"local": [], "vllm": ["--rollouts", "vllm"], "tp2": ["--rollouts", "vllm", "--vllm-tp", "2"]}
    for name, flags in runs.items():
        proc = subprocess.run([*TORCHRUN, __file__, "--model", str(ssft_run), *SMALL, "--out", str(tmp_path / name),
                               *flags], cwd=ROOT, env=CPU_ENV, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    local = read_metrics(tmp_path / "local")
    assert any(r["loss"] != 0 for r in local)  # the weights moved, so later syncs carry new ones
    for name in ("vllm", "tp2"):
        for a, b in zip(local, read_metrics(tmp_path / name), strict=True):
            assert (a["loss"], a["reward"], a["accuracy_per_tag"]) == (b["loss"], b["reward"], b["accuracy_per_tag"])
        calls = (tmp_path / name / "engine_calls.txt").read_text().splitlines()
        # each rank has 2 prompts x 4 rollouts; an engine over both ranks decodes both ranks' 8
        assert calls.count("generate 16" if name == "tp2" else "generate 8") == 3, calls


def test_bad_flags_and_a_missing_vllm(ssft_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` does where it is not installed
    with pytest.raises(SystemExit) as e:
        gfpo.main(["--model", str(ssft_run), *SMALL, "--out", str(tmp_path / "x"), "--rollouts", "vllm"])
    assert str(e.value).startswith("error: --rollouts vllm needs vLLM") and "pip install -r requirements-vllm.txt" \
        in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "x").exists()
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm())
    with pytest.raises(SystemExit, match="--vllm-tp 2: must divide the 1 ranks"):
        gfpo.main(["--model", str(ssft_run), *SMALL, "--out", str(tmp_path / "y"), "--rollouts", "vllm",
                   "--vllm-tp", "2"])
    assert not (tmp_path / "y").exists()


def test_the_engine_takes_what_the_plans_rollout_phase_leaves(monkeypatch):
    """--vllm-memory 0 on 8 x 80 GB for 32B: the GPU less plan.py's reserve and the training state
    its rollout phase holds (none with --cpu-offload); a GPU that training fills is refused."""
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(total_memory=80e9))
    config = Config.preset("qwen2.5-32b")
    parts = plan.estimate(config, 8, 1, rows=1, prompt=1, max_new=1)
    held = plan.phases(parts)["rollouts"] - sum(v for k, v in parts.items() if k.startswith("rollouts"))
    assert held == pytest.approx(12 * 32.76e9 / 8, rel=0.01)  # fp32 weights and AdamW moments, sharded
    world = World(rank=0, size=8, device=torch.device("cuda", 0))
    assert default_memory(config, world) * 80e9 == pytest.approx(80e9 - plan.RESERVE - held)
    world.offload = True
    assert default_memory(config, world) * 80e9 == pytest.approx(80e9 - plan.RESERVE)
    assert default_memory(config, World()) is None  # off GPUs: vLLM's own default
    with pytest.raises(UserError, match="add --cpu-offload"):
        default_memory(config, World(size=2, device=torch.device("cuda", 0)))


if __name__ == "__main__":  # a rank of test_two_gloo_ranks_...: gfpo.py's flags, the stand-in as vLLM
    sys.modules["vllm"] = fake_vllm()
    SyntheticTask.grade = parity
    gfpo.main(sys.argv[1:])
    out = Path(sys.argv[sys.argv.index("--out") + 1])
    if LLM.engines and int(__import__("os").environ["RANK"]) == 0:
        (out / "engine_calls.txt").write_text("\n".join(" ".join(map(str, c)) for c in LLM.engines[0].calls))
