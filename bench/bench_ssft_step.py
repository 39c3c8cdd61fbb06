"""
The cost of SSFT's matching, measured in one process: seconds per step of
    ssft         the N x M cost grid without gradients (ssft.cost_grid: each question's prefix once,
                 then the N*M continuations tag[fork:] + trace[:L] attending to its cached keys and
                 values), the matching (ssft.assign), the update on the M matched sequences
                 (ssft.set_loss), gradient clipping and AdamW: what `python ssft.py` does;
    mixed        the same update on the same M sequences under the one shared tag, no grid: plain
                 SFT (`ssft.py --mode mixed` also scores its 1 x M grid for the log, 1/N of SSFT's);
    unshared     ssft with the unoptimised grid: every one of the N*M rows prompt + tag + trace[:L]
                 run in full (batches.forward_rows), the question computed N*M times.
The two grids must give the same costs (the largest difference is printed and checked). Steps
alternate between the modes, and the ratios are medians of per-round ratios, so that a machine
shared with other work slows all modes alike.

Shapes:
    demo   the embedded demo: the demo model, the synthetic task, 16 questions x 4 traces, N = 6,
           L = --match-tokens (8, the demo's), 4096 tokens per pass;
    paper  the paper's: N = 6 tags, M = 4 traces of about 8,000 tokens (7,600 to 8,400), a
           300-token question, L = 1000, --questions per step (random tokens), on a small
           Qwen2-shaped model on CPU (--model small: hidden 256, 4 layers, vocabulary 8192) or a
           preset (qwen2.5-0.5b on a GPU), 20,000 tokens per pass. Also printed: the ratio that
           counting FLOPs predicts for this model and for Qwen2.5-32B (the attention share of a step
           grows with the context over the width, so a small model underrates the grid's share).

    python bench/bench_ssft_step.py [--shape demo|paper|both] [--repeats 3] [--threads 1] [--json out.json]
    python bench/bench_ssft_step.py --shape paper --device cuda --model qwen2.5-0.5b   # bench/gpu.sh
"""
import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ssft  # noqa: E402
from batches import forward_rows  # noqa: E402
from data import Tags, encode, encode_example, forking_tags, sequence, tag_text  # noqa: E402
from data.chat import Encoded  # noqa: E402
from data.synthetic import SYSTEM, make_examples, tokenizer_for  # noqa: E402
from data.tokenizer import special_id  # noqa: E402
from distributed import World, build_model, setup_world  # noqa: E402
from kernels import IGNORE_INDEX  # noqa: E402
from model import Config  # noqa: E402
from run import adamw  # noqa: E402

SMALL = dict(vocab_size=8192, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=16384)


@torch.no_grad()
def unshared_grid(model, *, questions, tags, L, budget, world, pad_id):
    """ssft.cost_grid without prefix sharing: each of the N*M rows prompt + tag + trace[:L] in full."""
    rows, where = [], []
    for k, enc in enumerate(questions):
        for i, tag in enumerate(tags.ids):
            for j, trace in enumerate(enc.traces):
                ids = enc.prompt + tag + trace[:L]
                targets = [IGNORE_INDEX] * (len(enc.prompt) + len(tag) - 1) + trace[:L]  # loss on the trace only
                rows.append((ids[:-1], targets))
                where.append((k, i, j))
    C = [np.zeros((len(tags.ids), len(enc.traces))) for enc in questions]
    for micro, nll, n in forward_rows(model, rows, budget, world, pad_id):
        for r, s, c in zip(micro, nll.tolist(), n.tolist()):
            k, i, j = where[r]
            C[k][i, j] = s / c
    return C


def step(mode, model, opt, questions, tags, shared, L, budget, max_len, world, pad_id):
    """One optimizer step of `mode` on `questions`, as ssft.train does it."""
    sigmas = [None] * len(questions)
    if mode != "mixed":
        model.eval()
        grid = ssft.cost_grid if mode == "ssft" else unshared_grid
        C = grid(model, questions=questions, tags=tags, L=L, budget=budget, world=world, pad_id=pad_id)
        sigmas = [ssft.assign(c, mode="ssft", rng=None) for c in C]
    rows = [sequence(enc.prompt, shared if sigma is None else tags.ids[sigma[j]], trace, max_len)
            for enc, sigma in zip(questions, sigmas) for j, trace in enumerate(enc.traces)]
    model.train()
    ssft.set_loss(model, rows=rows, budget=budget, world=world, pad_id=pad_id)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def demo_setup(args):
    examples = make_examples(640, seed=0)
    tok = tokenizer_for(examples)
    questions = [encode_example(tok, e, SYSTEM) for e in examples[:16]]
    config = Config(**{**Config.preset("demo").__dict__, "vocab_size": tok.get_vocab_size()})
    return config, questions, forking_tags(tok, 6), encode(tok, tag_text(None)), special_id(tok, "<|endoftext|>"), \
        dict(L=args.match_tokens, budget=4096, max_len=4096)


def paper_setup(args):
    config = Config(**SMALL) if args.model == "small" else Config.preset(args.model)
    rng = np.random.default_rng(0)
    words = lambda n: rng.integers(100, config.vocab_size, n).tolist()  # noqa: E731  (ids < 100: specials)
    # tags: <|im_start|> <think{i}> \n, differing in one (the forking) token; the shared one: <think>
    tags = Tags([[1, 10 + i, 2] for i in range(6)], 1, [10 + i for i in range(6)])
    questions = [Encoded(words(300), [words(int(rng.integers(7600, 8401))) for _ in range(4)])
                 for _ in range(args.questions)]
    return config, questions, tags, [1, 9, 2], 0, dict(L=1000, budget=args.micro_tokens, max_len=16384)


def flops(config, questions, n_tags, L):
    """(grid, update) forward FLOPs of a step by counting: 2 per parameter of every matmul and
    token (the lm_head only where there is a loss), and causal attention's 2 x 2 x d per (query, key)."""
    d, layers, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * config.head_dim
    per_token = 2 * layers * (2 * d * d + 2 * d * kv + 3 * d * config.intermediate_size)
    attn = lambda n, ctx: 4 * d * layers * (n * ctx + n * (n + 1) / 2)  # noqa: E731  n queries after ctx keys
    grid = update = 0.0
    for enc in questions:
        P = len(enc.prompt) + 1
        grid += P * per_token + attn(P, 0)
        for t in enc.traces:
            n = min(L, len(t)) + 2
            grid += n_tags * (n * (per_token + 2 * d * V) + attn(n, P))
            T = len(enc.prompt) + 3 + len(t)
            update += T * per_token + len(t) * 2 * d * V + attn(T, 0)
    return grid, 3 * update  # backward: twice the forward (activation checkpointing: once more)


def measure(name, args, world):
    config, questions, tags, shared, pad_id, shape = (demo_setup if name == "demo" else paper_setup)(args)
    torch.manual_seed(0)
    with torch.device(world.device):  # on a GPU, rank 0 initialises the full model there: in seconds
        model = build_model(world, None, config)
    opt = adamw(model, 1e-4, 0.1)
    # the two grids give the same costs
    model.eval()
    grids = [f(model, questions=questions, tags=tags, L=shape["L"], budget=shape["budget"], world=world,
               pad_id=pad_id) for f in (ssft.cost_grid, unshared_grid)]
    diff = max(float(np.abs(a - b).max()) for a, b in zip(*grids))
    seconds = {m: [] for m in ("mixed", "ssft", "unshared")}
    for r in range(args.repeats + 1):  # round 0 warms up
        for mode in seconds:
            if world.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            step(mode, model, opt, questions, tags, shared, world=world, pad_id=pad_id, **shape)
            if world.device.type == "cuda":
                torch.cuda.synchronize()
            if r:
                seconds[mode].append(time.perf_counter() - t)
    ratio = {m: statistics.median(a / b for a, b in zip(seconds[m], seconds["mixed"])) for m in ("ssft", "unshared")}
    grid, update = flops(config, questions, len(tags.ids), shape["L"])
    big_grid, big_update = flops(Config.preset("qwen2.5-32b"), questions, len(tags.ids), shape["L"])
    lengths = sorted(len(t) for enc in questions for t in enc.traces)
    result = {"shape": name, "device": str(world.device), "threads": torch.get_num_threads(),
              "model": {k: getattr(config, k) for k in SMALL}, "questions": len(questions),
              "traces": f"{len(lengths)} of {lengths[0]}..{lengths[-1]} tokens", "tags": len(tags.ids), "L": shape["L"],
              "micro_tokens": shape["budget"], "max_grid_difference": diff,
              "seconds_per_step": {m: statistics.median(s) for m, s in seconds.items()},
              "ssft_over_mixed": ratio["ssft"], "unshared_over_mixed": ratio["unshared"],
              "flop_ratio_this_model": 1 + grid / update, "flop_ratio_qwen2.5_32b": 1 + big_grid / big_update,
              "flop_ratio_qwen2.5_32b_checkpointing": 1 + big_grid / (big_update * 4 / 3)}
    s = result["seconds_per_step"]
    print(f"{name}: {len(questions)} questions x {result['traces']}, N = {len(tags.ids)}, L = {shape['L']}, "
          f"{shape['budget']} tokens per pass, {config.hidden_size}-wide {config.num_hidden_layers}-layer model, "
          f"vocabulary {config.vocab_size}, {world.device}, {torch.get_num_threads()} threads")
    print(f"  mixed step    {s['mixed']:8.3f} s"
          f"\n  ssft step     {s['ssft']:8.3f} s   ssft / mixed     {ratio['ssft']:.3f}x"
          f"\n  unshared step {s['unshared']:8.3f} s   unshared / mixed {ratio['unshared']:.3f}x"
          f"\n  grids differ by at most {diff:.2e} (mean NLL)")
    print(f"  FLOP count predicts ssft / mixed = {result['flop_ratio_this_model']:.3f}x for this model, "
          f"{result['flop_ratio_qwen2.5_32b']:.3f}x for Qwen2.5-32B "
          f"({result['flop_ratio_qwen2.5_32b_checkpointing']:.3f}x with activation checkpointing)")
    tolerance = 1e-3 if world.device.type == "cpu" else 5e-2  # fp32 on CPUs, bf16 on GPUs
    assert diff < tolerance, f"the shared and unshared grids differ by {diff}"
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="both", choices=("demo", "paper", "both"))
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (after one warm-up round)")
    p.add_argument("--match-tokens", type=int, default=ssft.SSFTConfig.match_tokens, help="demo shape: L")
    p.add_argument("--questions", type=int, default=1, help="paper shape: questions per step")
    p.add_argument("--micro-tokens", type=int, default=20000, help="paper shape: tokens per forward pass")
    p.add_argument("--model", default="small", help="paper shape: 'small' or a preset (qwen2.5-0.5b on a GPU)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default; 1 on a busy machine, "
                   "where waiting OpenMP threads slow small ops down many times)")
    p.add_argument("--json")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: no CUDA GPU")
    world = setup_world() if a.device == "cuda" else World()  # CUDA: a one-rank group, FSDP2 in bf16
    results = [measure(name, a, world) for name in (("demo", "paper") if a.shape == "both" else (a.shape,))]
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    gc.collect()  # FSDP's reference cycles go before the process group (else an abort at exit, at times)
    world.close()


if __name__ == "__main__":
    main()
