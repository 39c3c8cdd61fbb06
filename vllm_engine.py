"""
GFPO's rollouts on vLLM, colocated with training (`gfpo.py --rollouts vllm`): the rollout engine of
sampling.py for the paper's scale, where one step is 256 prompts x 8 rollouts of up to 16k tokens
and model.generate would take hours (README, "Scale"). Optional: nothing imports vLLM unless asked.

    pip install -r requirements-vllm.txt                     # vLLM 0.33.0 (a CUDA build; its own torch)
    python gfpo.py --model out/ssft --rollouts vllm          # one GPU
    torchrun --nproc_per_node=8 gfpo.py --model runs/ssft32b --rollouts vllm --vllm-tp 4 --cpu-offload ...
    python -m pytest -q test_vllm_engine.py                  # against a stand-in with vLLM 0.33.0's signatures

What the engine is given, and what stays ours:
- The forking token is drawn by gfpo.py from its own fork logits (the policy whose log-probability
  the loss takes); the engine gets the prompt and the forced tag as one prompt of token ids and
  generates the answer. pi_old is exact whatever the engine's numerics, and the engine needs no
  restriction to the tags.
- One request per rollout, seeded by its own key (SamplingParams.seed), so no batch or rank count
  changes a draw. vLLM's sampler and bf16 kernels are not model.generate's: a rollout is a draw of
  the same policy, not the same draw as the local engine's.
- Only the stop ids end an answer (ignore_eos: the model's own EOS list is not ours), and the stop
  id is kept, as model.generate keeps it.

Memory, shared with training on each GPU (TRL's colocate mode): the engine is built with sleep mode
and reads no checkpoint (load_format "dummy"): its weights always come from the trainer. It may use
--vllm-memory of the GPU (default: what training leaves free during the rollouts, by plan.py's
estimate) for its weights (bf16, 1/TP of the model) and its paged KV cache. After the rollouts it
sleeps at level 2, releasing both, so the update has the GPU; before the next rollouts it wakes,
takes the weights of the last optimizer step (sync_weights; distributed.full_weights: gathered
from the FSDP2 shards one tensor at a time, in HF's names, in bf16, handed over in memory, never
written to disk), and maps its KV cache again when the rollout phase opens (phase).

Tensor parallelism (--vllm-tp K): the ranks of torchrun, in groups of K consecutive ranks, each run
one engine together (vLLM's external launcher). A group's ranks pool their jobs, each engine rank
decodes them all, and each rank keeps its own.

Written against vLLM 0.33.0, the newest that installs from PyPI (read in its source, and in 0.34.0's,
where the calls made here work unchanged: vllm/entrypoints/llm.py, vllm/sampling_params.py,
vllm/v1/worker/gpu_worker.py, vllm/model_executor/model_loader/reload/inplace.py). Used: LLM(model,
tensor_parallel_size, dtype, seed, gpu_memory_utilization, enable_sleep_mode, load_format,
distributed_executor_backend, max_model_len, max_num_seqs, skip_tokenizer_init), LLM.generate,
LLM.sleep(level), LLM.wake_up(tags), LLM.reset_prefix_cache, SamplingParams, TokensPrompt, and
LLM.collective_rpc("reload_weights", kwargs={"weights_iterator", "is_checkpoint_format"}), which
runs the worker's in-place reload (vLLM's own loader: HF names, fused q/k/v and gate/up, the tied
head). That worker method is the part most likely to move: older releases reloaded only from disk
(no weights_iterator), and a rename would fail at the first sync, with vLLM's error.
External-launcher mode also needs VLLM_ENABLE_V1_MULTIPROCESSING=0 (set here), so that the engine
runs in this process and the iterator reaches it as an object.
"""
import contextlib
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from distributed import compute_dtype, full_weights
from flags import UserError, arg
from sampling import seed_of

INSTALL = "pip install -r requirements-vllm.txt"
SLEEP_LEVEL = 2  # weights and KV cache released: the weights are reloaded before every use anyway


@dataclass
class EngineFlags:
    """gfpo.py's flags of the rollout engine."""
    rollouts: str = arg("local", f"the rollout engine: local (model.generate) or vllm (colocated; {INSTALL})",
                        choices=("local", "vllm"))
    vllm_tp: int = arg(1, "--rollouts vllm: ranks per engine (tensor parallelism), consecutive ranks", low=1)
    vllm_memory: float = arg(0.0, "--rollouts vllm: share of each GPU the engine may take (0: what training "
                                  "leaves free during the rollouts, by plan.py's estimate)", low=0, below=1)


def import_vllm():
    """vLLM's module, or a one-line UserError naming the install command."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # external launcher: the engine in this process
    try:
        import vllm
    except ImportError as e:
        raise UserError(f"--rollouts vllm needs vLLM, which is not installed ({e}): {INSTALL}") from None
    return vllm


class VLLMEngine:
    """The rollout engine of sampling.py on vLLM; `source` is the model directory (config.json)."""

    def __init__(self, source, world, *, tp=1, memory=None, max_len=32768, max_seqs=256, seed=0):
        if world.size % tp:
            raise UserError(f"--vllm-tp {tp}: must divide the {world.size} ranks")
        self.vllm, self.world, self.tp = import_vllm(), world, tp
        self.group = _tp_group(world, tp)
        for key, value in (("RANK", world.rank), ("LOCAL_RANK", world.device.index or 0),
                           ("WORLD_SIZE", world.size), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", _free_port())):
            os.environ.setdefault(key, str(value))  # torchrun sets these; one process does not
        share = {} if memory is None else {"gpu_memory_utilization": memory}  # None: vLLM's default
        self.llm = self.vllm.LLM(
            model=str(source), tensor_parallel_size=tp, dtype=str(compute_dtype(world.device)).split(".")[1],
            seed=seed + world.rank // tp, enable_sleep_mode=True, load_format="dummy",
            distributed_executor_backend="external_launcher", max_model_len=max_len, max_num_seqs=max_seqs,
            skip_tokenizer_init=True, **share)
        self.llm.sleep(level=SLEEP_LEVEL)  # training has the GPU until the first rollouts

    @classmethod
    def for_run(cls, cfg, model, source, data, world):
        """The engine of a gfpo.py run (its flags, and room for its longest prompt, tag and answer)."""
        longest = max(map(len, data.prompts.ids)) + max(map(len, data.prompts.slots)) + data.max_new
        memory = cfg.vllm_memory or default_memory(model.config, world)
        return cls(source, world, tp=cfg.vllm_tp, memory=memory, max_len=longest, max_seqs=cfg.sample_batch,
                   seed=cfg.seed)

    def sync_weights(self, model):
        """Wake the engine's weights and load the trained ones into them, in HF names, in bf16."""
        _return_cached_memory()
        self.llm.wake_up(tags=["weights"])
        weights = full_weights(model, compute_dtype(self.world.device))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()  # cached prompts were computed with the old weights

    def generate(self, jobs, *, temperature, top_p, max_new, stop):
        """The ids generated after the forced ones, for jobs [(prompt ids, forced ids, seed key)]:
        the prompt and the forced tag go to the engine as one prompt."""
        mine = [(list(p) + list(f), seed_of(*key)) for p, f, key in jobs]
        pooled = _pool(mine, self.group, self.tp)  # every job of the tensor-parallel group
        params = [self.vllm.SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=max_new,
                                           stop_token_ids=list(stop), ignore_eos=True, seed=seed, detokenize=False)
                  for _, seed in pooled]
        outputs = self.llm.generate([self.vllm.TokensPrompt(prompt_token_ids=ids) for ids, _ in pooled], params,
                                    use_tqdm=False)
        start = dist.get_rank(self.group) * len(mine) if self.group is not None else 0
        return [list(out.outputs[0].token_ids) for out in outputs[start:start + len(mine)]]

    @contextlib.contextmanager
    def phase(self):
        """The rollout phase: the engine's KV cache mapped again (its weights woke with the sync);
        asleep when it ends, so that the update has the GPU."""
        _return_cached_memory()
        self.llm.wake_up(tags=["kv_cache"])
        try:
            yield
        finally:
            self.llm.sleep(level=SLEEP_LEVEL)


def _return_cached_memory():
    """Hand the blocks torch's allocator caches back to the driver before the engine maps its memory
    again (training freed them; cached, they would still count as used)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _tp_group(world, tp):
    """The process group of this rank's tensor-parallel engine (None for tp 1). Every rank makes
    every group, as torch requires."""
    if tp == 1:
        return None
    groups = [dist.new_group(list(range(s, s + tp))) for s in range(0, world.size, tp)]
    return groups[world.rank // tp]


def _pool(mine, group, tp):
    """The jobs of every rank of the tensor-parallel group, in rank order. Each rank has as many
    (gfpo.py gives every rank batch / ranks prompts)."""
    if group is None:
        return mine
    out = [None] * tp
    dist.all_gather_object(out, mine, group=group)
    return [job for rank in out for job in rank]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_memory(config, world):
    """--vllm-memory 0: the share of this GPU the engine may take (None off GPUs: vLLM's default),
    what plan.py's rollout phase leaves: all but its reserve and the training state held through
    the rollouts (the sharded fp32 weights and AdamW moments; none with --cpu-offload)."""
    if world.device.type != "cuda":
        return None
    from plan import RESERVE, estimate
    parts = estimate(config, world.size, 1)
    held = 0 if world.offload else parts["fp32 weights"] + parts["AdamW moments"]
    total = torch.cuda.get_device_properties(world.device).total_memory
    share = (total - RESERVE - held) / total
    if share < 0.1:
        raise UserError(f"--rollouts vllm: training holds {held / 1e9:.0f} GB of this GPU's {total / 1e9:.0f} GB "
                        "through the rollouts; add --cpu-offload or GPUs, or set --vllm-memory")
    return share
