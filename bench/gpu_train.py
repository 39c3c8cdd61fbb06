"""
Training throughput on one GPU: tokens per second and model FLOPs utilisation (MFU) of the training
step ssft.py runs (distributed.build_model on a one-rank world: FSDP2 with bf16 compute, fp32
master weights, gradient reduction and AdamW; the fused per-sequence loss), for random-initialised
Qwen2.5 models.

Each step: one micro-batch of --tokens tokens (one sequence of random ids, a loss on every token),
forward + backward, gradient clipping, AdamW, zero_grad; --warmup steps (Triton compiles, the
allocator warms up), then --steps timed ones (CUDA-synchronised wall clock, median).

FLOPs per token, the convention of torchtitan and nanoGPT (PaLM, appendix B):
    6 * N  +  12 * L * H * Q * T
N: parameters of every matmul: all but the embedding, with the lm_head counted even when it is
tied to the embedding (its matmul runs either way); L layers, H query heads of size Q, T tokens of
context. The attention term counts the full T x T square, not halved for causality, as torchtitan
and nanoGPT do (llm.c halves it); activation checkpointing's recompute is not counted (it is work
the model did not need). MFU = tokens/s * FLOPs per token / peak, with the dense bf16 peak of the
card: 989 TFLOP/s for H100 and H200 SXM (torchtitan's and nanochat's figure; --peak-tflops to set
another). Also reported: torch.cuda.max_memory_allocated against plan.py's estimate of the step.

    python bench/gpu_train.py --out bench/out/gpu_train.json            # (or: bash bench/gpu.sh)
    python bench/gpu_train.py --device cpu --smoke                      # CPU smoke test of this file
"""
import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import plan  # noqa: E402
from distributed import World, build_model, setup_world  # noqa: E402
from model import Config  # noqa: E402
from run import adamw  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "B200": 2250.0, "A100": 312.0}  # dense bf16, SXM


def flops_per_token(config, tokens):
    """6 N + 12 L H Q T (see the docstring)."""
    d, L, ffn, V = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * config.head_dim
    matmul = L * (d * d + 2 * d * kv + d * d + 3 * d * ffn) + V * d  # q, k, v, o, MLP; the lm_head
    return 6 * matmul + 12 * L * config.num_attention_heads * config.head_dim * tokens


def peak_flops(device, given):
    if given:
        return given * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_TFLOPS.items() if key in name), None)


def measure(name, config, world, a):
    torch.manual_seed(0)
    with torch.device(world.device):  # rank 0 initialises the full model here: on the GPU, in seconds
        model = build_model(world, None, config)
    model.gradient_checkpointing = a.activation_checkpointing
    opt = adamw(model, 1e-5, 0.1)
    gen = torch.Generator(device=world.device).manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (1, a.tokens + 1), generator=gen, device=world.device)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    sync = torch.cuda.synchronize if world.device.type == "cuda" else (lambda: None)
    if world.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for step in range(a.warmup + a.steps):
        sync()
        t = time.perf_counter()
        nll, n = model(inputs, targets=targets)
        loss = nll.sum() / n.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if step >= a.warmup:
            times.append(time.perf_counter() - t)
        losses.append(loss.item())
    seconds = statistics.median(times)
    tokens_per_s = a.tokens / seconds
    fpt = flops_per_token(config, a.tokens)
    peak = peak_flops(world.device, a.peak_tflops)
    parts = plan.estimate(config, world.size, a.tokens, device=world.device.type)
    cuda = world.device.type == "cuda"
    result = {"model": name, "device": torch.cuda.get_device_name(world.device) if cuda else "cpu",
              "tokens_per_step": a.tokens, "activation_checkpointing": a.activation_checkpointing,
              "seconds_per_step": seconds, "tokens_per_second": tokens_per_s, "flops_per_token": fpt,
              "achieved_tflops": tokens_per_s * fpt / 1e12, "mfu": tokens_per_s * fpt / peak if peak else None,
              "peak_tflops": peak / 1e12 if peak else None, "first_loss": losses[0], "last_loss": losses[-1],
              "plan_peak_GB": plan.peak(parts, a.activation_checkpointing) / 1e9,
              "max_memory_allocated_GB": torch.cuda.max_memory_allocated() / 1e9 if cuda else None}
    mfu = f"MFU {result['mfu']:.1%}" if peak else "MFU n/a (unknown peak)"
    mem = f", memory {result['max_memory_allocated_GB']:.1f} GB (plan {result['plan_peak_GB']:.1f} GB)" \
        if world.device.type == "cuda" else ""
    print(f"{name}: {a.tokens} tokens/step, {seconds * 1e3:.1f} ms/step, {tokens_per_s:,.0f} tokens/s, "
          f"{result['achieved_tflops']:.1f} TFLOP/s, {mfu}{mem}; loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
    del model, opt
    if world.device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="qwen2.5-0.5b,qwen2.5-1.5b", help="presets, comma-separated")
    p.add_argument("--tokens", type=int, default=8192, help="tokens per micro-batch (one sequence)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=0, help="the card's dense bf16 peak (default: by its name)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--smoke", action="store_true", help="the tiny preset, 128 tokens, 2 steps: the code runs")
    p.add_argument("--out", help="JSON results")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU (use --device cpu --smoke to check this file on a CPU)")
    if a.smoke:
        a.models, a.tokens, a.warmup, a.steps = "tiny", 128, 1, 2
    world = setup_world() if a.device == "cuda" else World()  # CUDA: a one-rank group, FSDP2 in bf16
    results = [measure(name, Config.preset(name), world, a) for name in a.models.split(",")]
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(results, indent=2))
    gc.collect()  # FSDP's reference cycles go before the process group (else an abort at exit, at times)
    world.close()


if __name__ == "__main__":
    main()
