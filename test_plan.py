"""
plan.py against measured memory: the activations it counts per layer are exactly what autograd
saves (fp32 and bf16), and its per-rank estimate of each phase (the fp32 state, forward + backward
with and without activation checkpointing, the optimizer step, the gathered model and the KV
cache of the rollouts) matches the peak memory of CPU runs, in one process and on two gloo ranks,
within TOLERANCE.

How memory is measured: in a fresh process (python or torchrun) with MALLOC_MMAP_THRESHOLD_ set,
so that glibc returns every freed tensor to the system and the resident set size follows the live
tensors; after a warm-up (a throwaway model of the same shape, one step: the lazily imported and
allocated parts of torch); the peak of a phase is VmHWM after resetting it (/proc/self/clear_refs)
minus VmRSS before the phase. A CPU run computes in fp32 (b = 4), so the plan is checked with
device="cpu"; the bf16 terms differ only in b, which the saved-tensor count checks.

    python -m pytest -q test_plan.py
"""
import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import plan
from conftest import CPU_ENV, TORCHRUN, peak_rss, rss
from model import Config, Qwen2, rope_cos_sin

ROOT = Path(__file__).parent
# The estimate is within 7.5% of every phase measured here (run with -s to see them); 10% leaves
# room for the allocator and the launcher, and is well under the margin RESERVE keeps on a GPU.
TOLERANCE = 0.10
SMALL = dict(vocab_size=4096, hidden_size=384, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=6,
             num_key_value_heads=2)
TOKENS = 1024
ROWS, PROMPT, NEW = 16, 64, 256  # rollouts decoded at once in the two-rank run


def measure(world):
    """Run in a fresh process (or each rank): {phase: (measured bytes, estimated bytes)}."""
    from distributed import build_model, gathered
    config = Config(**SMALL, tie_word_embeddings=world.size == 1)  # two ranks: untied, like 7B and up
    parts = plan.estimate(config, world.size, TOKENS, device="cpu", rows=ROWS, prompt=PROMPT, max_new=NEW)
    gen = torch.Generator().manual_seed(world.rank)
    ids = torch.randint(0, config.vocab_size, (1, TOKENS), generator=gen)
    targets = torch.randint(0, config.vocab_size, (1, TOKENS), generator=gen)
    targets[:, :TOKENS // 8] = -100  # a prompt without loss, as in training

    def step(model, opt, tokens, ac=False):
        model.gradient_checkpointing = ac
        s, _ = model(ids[:, :tokens], targets=targets[:, :tokens])
        s.sum().backward()

    def build():
        torch.manual_seed(0)
        model = build_model(world, None, config)
        return model, torch.optim.AdamW(model.parameters(), foreach=True)  # foreach: what GPUs run

    warm, opt = build()  # the one-time costs: lazy imports, thread pools, allocator caches
    step(warm, opt, 8)
    opt.step()
    del warm, opt
    gc.collect()
    start = rss()
    model, opt = build()
    step(model, opt, 8)
    opt.step()
    state = sum(parts[k] for k in plan.STATE)
    out = {"state": (rss() - start, state)}
    for ac in (False, True):
        opt.zero_grad(set_to_none=False)
        out[f"forward + backward, checkpointing {ac}"] = (peak_rss(lambda: step(model, opt, TOKENS, ac))[1],
                                                          plan.phases(parts, ac)["forward + backward"] - state)
    out["optimizer step"] = (peak_rss(opt.step)[1], plan.phases(parts)["optimizer step"] - state)
    opt.zero_grad(set_to_none=True)  # rollouts run without gradients
    if world.size > 1:  # (one CPU process has no FSDP: nothing is gathered)
        prompts = torch.randint(0, config.vocab_size, (ROWS, PROMPT), generator=gen)

        def rollouts():
            with gathered(model):
                model.generate(prompts, NEW, temperature=1.0, generators=[gen] * ROWS)

        rollout_parts = sum(v for k, v in parts.items() if k.startswith("rollouts"))
        out["rollouts: model gathered, KV cache, prefill"] = (peak_rss(rollouts)[1], rollout_parts)
    return out


def run_measure(ranks, out):
    # CPU runs (also on a GPU machine); no OpenMP waits on a busy machine
    env = {**CPU_ENV, "MALLOC_MMAP_THRESHOLD_": "65536"}
    launcher = {1: [sys.executable], 2: TORCHRUN}[ranks]
    proc = subprocess.run([*launcher, __file__, "measure", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def check(results):
    errors = []
    for rank, out in enumerate(results):
        for phase, (measured, estimated) in out.items():
            error = estimated / measured - 1
            print(f"rank {rank} {phase:<40} measured {measured / 1e6:7.1f} MB  plan {estimated / 1e6:7.1f} MB  "
                  f"{error:+.1%}")
            if abs(error) > TOLERANCE:
                errors.append(f"rank {rank} {phase}: plan {estimated / 1e6:.1f} MB, measured {measured / 1e6:.1f} MB")
    assert not errors, errors


def test_one_process_peaks_match_the_plan(tmp_path):
    check(run_measure(1, tmp_path))


def test_two_rank_peaks_match_the_plan(tmp_path):
    results = run_measure(2, tmp_path)
    assert len(results) == 2
    check(results)


def offloaded(world):
    """Run in each rank: shard the SMALL model as --cpu-offload does and take a training step. The
    offload policy each FSDP unit got and where the sharded state lives; on a GPU also, with and
    without offload, the memory that stays on the GPU between steps and the peaks of forward +
    backward and of the optimizer step (torch.cuda's allocator counts)."""
    import torch.distributed.fsdp as fsdp
    from distributed import build_model
    policies, fully_shard = [], fsdp.fully_shard

    def recording(module, **kw):
        policy = kw.get("offload_policy")
        policies.append([type(policy).__name__, getattr(policy, "pin_memory", None)])
        return fully_shard(module, **kw)

    fsdp.fully_shard, cuda, out = recording, world.device.type == "cuda", {}
    config = Config(**SMALL)
    ids = torch.randint(0, config.vocab_size, (1, TOKENS), generator=torch.Generator().manual_seed(world.rank))
    for offload in ((False, True) if cuda else (True,)):
        world.offload = offload
        cuda and torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated() if cuda else 0
        model = build_model(world, None, config)
        opt = torch.optim.AdamW(model.parameters(), foreach=True)
        cuda and torch.cuda.reset_peak_memory_stats()
        model(ids.to(world.device), targets=ids.to(world.device))[0].sum().backward()
        peaks = [torch.cuda.max_memory_allocated() - base] if cuda else []
        cuda and torch.cuda.reset_peak_memory_stats()
        opt.step()
        peaks += [torch.cuda.max_memory_allocated() - base] if cuda else []
        opt.zero_grad(set_to_none=True)
        state = [p.to_local() for p in model.parameters()] + [t for s in opt.state.values() for t in s.values()
                                                             if t.ndim]
        out[str(offload)] = {"policies": policies[:], "state devices": sorted({t.device.type for t in state}),
                             "pinned": all(t.is_pinned() for t in state) if cuda else None,
                             "resident": torch.cuda.memory_allocated() - base if cuda else None, "peaks": peaks}
        policies.clear()
        del model, opt, state
        gc.collect()
    return out


# FSDP units of SMALL: a block each, the embedding unless tied (then in the head's), the head, the root
UNITS = SMALL["num_hidden_layers"] + 2 + (not Config(**SMALL).tie_word_embeddings)


def test_cpu_offload_shards_every_unit_with_the_policy(tmp_path):
    """Two gloo ranks: every FSDP unit gets CPUOffloadPolicy (unpinned: no accelerator to pin for),
    the state is on the CPU, and a step runs. (On a CPU the memory is host memory either way: the
    GPU test below measures what offload saves.)"""
    proc = subprocess.run([*TORCHRUN, __file__, "offload", str(tmp_path)], cwd=ROOT, env=CPU_ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in range(2):
        out = json.loads((tmp_path / f"rank{r}.json").read_text())["True"]
        assert out["policies"] == [["CPUOffloadPolicy", False]] * UNITS
        assert out["state devices"] == ["cpu"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu.sh runs it)")
def test_cpu_offload_on_a_gpu_leaves_what_the_plan_says(tmp_path):
    """One GPU (a one-rank NCCL group): with --cpu-offload the sharded state is in pinned host
    memory, nothing of it stays on the GPU between steps (the plan's 0), the optimizer step runs on
    the CPU, and forward + backward peaks lower by about the state the plan moves off."""
    proc = subprocess.run([sys.executable, __file__, "offload", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "rank0.json").read_text())
    on, off = out["False"], out["True"]
    parts = plan.estimate(Config(**SMALL), 1, TOKENS, device="cuda")
    held = parts["fp32 weights"] + parts["AdamW moments"]  # what stays on the GPU between steps
    print(f"resident {on['resident'] / 1e6:.1f} MB (plan {held / 1e6:.1f}), offloaded {off['resident'] / 1e6:.1f} MB;"
          f" peaks {on['peaks']} / {off['peaks']}")
    assert off["policies"] == [["CPUOffloadPolicy", True]] * UNITS
    assert off["state devices"] == ["cpu"] and off["pinned"] and on["state devices"] == ["cuda"]
    assert on["resident"] == pytest.approx(held, rel=TOLERANCE) and off["resident"] < 0.02 * held
    assert off["peaks"][1] < 0.1 * on["peaks"][1]  # the optimizer step: on the CPU
    assert on["peaks"][0] - off["peaks"][0] > 0.8 * held  # forward + backward without the state


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activations_per_layer_are_what_autograd_saves(dtype):
    """Sum the storages that autograd saves in one decoder layer (weights and RoPE tables aside)."""
    config = Config(**SMALL)
    layer = Qwen2(config).to(dtype).model.layers[0]
    T = 128
    x = torch.randn(1, T, config.hidden_size, dtype=dtype, requires_grad=True)
    cos, sin = rope_cos_sin(torch.arange(T)[None], config.head_dim, config.rope_theta, dtype)
    skip = {t.untyped_storage().data_ptr() for t in [*layer.parameters(), cos, sin]}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in skip:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, cos, sin)
    b = torch.finfo(dtype).bits // 8
    assert sum(saved.values()) == T * plan.activations_per_token(config, b)[0]


def test_the_32b_run_needs_checkpointing_and_fits_the_paper_machine():
    config = Config.preset("qwen2.5-32b")
    parts = plan.estimate(config, 8, 16384)
    assert parts["fp32 weights"] + parts["fp32 gradients"] + parts["AdamW moments"] == pytest.approx(16 * 32.76e9 / 8,
                                                                                                     rel=0.01)
    assert plan.options(config, 8, 192e9, 16384)[0] == "activation checkpointing"  # 8 x B200, the paper's
    assert plan.options(config, 8, 80e9, 16384)[0] == "activation checkpointing + CPU offload"
    assert plan.fewest_gpus(config, 80e9, 16384) == 16


def test_vllm_rollouts_hold_a_tp_share_of_the_weights():
    """On vLLM engines of TP GPUs a GPU holds 1/TP of the weights, not the gathered model; the KV
    cache of a GPU's rows is the local engine's (its rows span TP GPUs, each holding 1/TP of them)."""
    config, P = Config.preset("qwen2.5-32b"), 32.76e9
    local, tp2 = (plan.estimate(config, 8, 4096, rows=4, prompt=512, max_new=16384, tp=tp) for tp in (0, 2))
    assert local["rollouts: whole model gathered"] == pytest.approx(2 * P, rel=0.01)
    assert tp2["rollouts: vLLM engine weights, 1/TP"] == pytest.approx(P, rel=0.01)
    assert local["rollouts: KV cache"] == tp2["rollouts: KV cache"]
    rows = [plan.rollout_rows(config, 8, 80e9, 512, 16384, offload=True, tp=tp) for tp in (0, 2, 8)]
    assert rows[0] < rows[1] < rows[2]


def test_table_names_every_size():
    text = plan.table()
    assert all(f"| qwen2.5-{s} |" in text for s in ("0.5b", "1.5b", "3b", "7b", "14b", "32b", "72b"))


if __name__ == "__main__":  # `measure` or `offload`: each rank writes its own results
    from distributed import setup_world
    world = setup_world()
    result = measure(world) if sys.argv[1] == "measure" else offloaded(world)
    (Path(sys.argv[2]) / f"rank{world.rank}.json").write_text(json.dumps(result))
    gc.collect()  # the FSDP model's cycles, before the process group goes (see test_checkpoint.py)
    world.close()
