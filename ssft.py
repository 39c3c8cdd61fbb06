"""
SSFT: set supervised fine-tuning, with bipartite matching between forking tags and traces.

Every step, for each question with M traces and N tags <think1>..<thinkN> (N >= M):
  1. C[i, j] = mean NLL of the first L tokens of trace j after tag i, without gradients  (cost_grid)
  2. sigma = linear_sum_assignment(C): each trace j gets its own tag sigma(j)             (assign)
  3. next-token loss on the M sequences (question, <think sigma(j)>, trace j)             (train_step)
The baselines run the same code: --mode random draws sigma at random each step; --mode mixed
puts every trace under the one shared tag <think>.

    python ssft.py                                    # the embedded demo: synthetic task, CPU ok
    python ssft.py --mode mixed --out out/mixed       # the same run with a baseline
    python ssft.py --model Qwen2.5-32B-Instruct/ --data s1k4.jsonl --out out/ssft32b \\
        --steps 320 --batch 16 --lr 1e-5 --weight-decay 1e-4 --match-tokens 1000 --max-len 16384
    torchrun --nproc_per_node=8 ssft.py --model ... # FSDP2; K ranks compute the same step as one
    python ssft.py --plan --model qwen2.5-32b --world-size 8 --max-len 16384   # memory per GPU
    python -m pytest -q test_ssft.py
"""
import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from data import DataError, chat, collate, encode, encode_example, forking_tags, load_traces, sequence, tag_text
from data.tokenizer import load_tokenizer, special_id
from distributed import build_model, find_checkpoint, load_optimizer, save_checkpoint, setup_dist
from hungarian import linear_sum_assignment
from model import Config

MODES = ("ssft", "random", "mixed")


def arg(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    mode: str = arg("ssft", "ssft: Hungarian matching; random: random tags; mixed: one shared tag", choices=MODES)
    model: str = arg("demo", "a preset name (model.PRESETS, trained from scratch) or a HF checkpoint dir")
    data: str = arg("synthetic", "'synthetic' (the demo task) or a multi-trace JSONL file")
    tokenizer: str = arg("", "tokenizer.json; default: the model directory's, or trained on the synthetic task")
    out: str = arg("out/ssft", "run directory: metrics.jsonl, checkpoint/ (HF format), eval.json")
    steps: int = arg(400, "optimizer steps")
    batch: int = arg(16, "questions per step, across all ranks")
    num_tags: int = arg(6, "N forking tags <think1>..<thinkN>")
    traces: int = arg(4, "M traces per question (the first M of each line)")
    allow_fewer: bool = arg(False, "train questions with fewer than --traces traces instead of failing")
    match_tokens: int = arg(16, "L: trace tokens in the matching cost (the paper uses 1000)")
    max_len: int = arg(4096, "training sequences are truncated to this many tokens")
    micro_tokens: int = arg(4096, "padded tokens per forward pass; more is accumulated (a longer row runs alone)")
    tag_loss: bool = arg(True, "train on the tag tokens too (everything after the assistant header)")
    lr: float = arg(3e-3, "peak learning rate (s1 recipe for 32B: 1e-5)")
    min_lr: float = arg(0.1, "final learning rate of the cosine, as a fraction of --lr")
    warmup: float = arg(0.05, "linear warm-up, as a fraction of --steps")
    weight_decay: float = arg(0.1, "AdamW weight decay on matrices (s1: 1e-4)")
    grad_clip: float = arg(1.0, "clip the global gradient norm to this")
    seed: int = arg(0, "seeds initialisation, data order and random tags")
    save_every: int = arg(0, "also checkpoint every this many steps (0: only at the end)")
    resume: bool = arg(False, "continue the run in --out from its checkpoint, exactly")
    overwrite: bool = arg(False, "discard an unfinished run in --out instead of refusing")
    stop_after: int = arg(0, "leave after this many steps of this invocation (preemption; then --resume)")
    activation_checkpointing: bool = arg(False, "recompute each block in backward to save memory")
    train_questions: int = arg(2000, "synthetic task: training questions")
    eval_questions: int = arg(100, "synthetic task: held-out questions evaluated at the end (0: none)")
    plan: bool = arg(False, "print the per-GPU memory plan for --model and --world-size, then exit")
    world_size: int = arg(8, "--plan only: number of GPUs")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
        else:
            p.add_argument(flag, type=type(f.default), default=f.default, help=f.metadata["help"],
                           choices=f.metadata.get("choices"))
    return TrainConfig(**vars(p.parse_args(argv)))


# -------------------------------------------------------------------------------------------------
# Data and tokenizer


def load_task(cfg, tokenizer=None):
    """Training examples, held-out examples (synthetic only), the tokenizer, the system message.
    tokenizer: a path that overrides --tokenizer (a resumed run reads its checkpoint's)."""
    tokenizer = tokenizer or cfg.tokenizer
    if cfg.data == "synthetic":
        from data.synthetic import SYSTEM, split, tokenizer_for
        train, held_out = split(cfg.train_questions, cfg.eval_questions)
        tok = load_tokenizer(tokenizer) if tokenizer else tokenizer_for(train)
        return train, held_out, tok, SYSTEM
    train = load_traces(cfg.data, cfg.traces, cfg.allow_fewer)
    if tokenizer or Path(cfg.model).is_dir():
        return train, [], load_tokenizer(tokenizer or cfg.model), chat.SYSTEM
    raise DataError(cfg.data, None, None, f"--model {cfg.model} is a preset: pass --tokenizer")


def micro_batches(lengths, budget):
    """Group row indices, longest first, so each group's padded size len(group) * max_len stays
    within `budget` tokens (a row longer than the budget gets a group of its own)."""
    groups, longest = [], 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and (len(groups[-1]) + 1) * longest <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
            longest = lengths[i]
    return groups


def even_batches(d, groups):
    """Under FSDP every rank must run the same number of forward/backward passes (each one is a
    collective), so ranks with fewer micro-batches run empty ones (None)."""
    n = max(d.gather(len(groups)))
    return groups + [None] * (n - len(groups))


def forward_rows(model, rows, groups, pad_id, device):
    """Run each micro-batch of (ids, targets) rows; yield (indices, nll sums, token counts)."""
    for g in groups:
        batch = [rows[i] for i in g] if g is not None else [([pad_id], [-100])]
        ids, targets = collate(batch, pad_id)
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            nll, n = model(ids.to(device), targets=targets.to(device))
        yield g or [], nll, n


# -------------------------------------------------------------------------------------------------
# The SSFT step


@torch.no_grad()
def cost_grid(model, encs, tags, L, budget, pad_id, d):
    """Per question, C (N, M): mean NLL of the first L tokens of trace j after tag i (the N x M
    grid, all of it in as few forward passes as the token budget allows)."""
    rows, where = [], []
    for q, e in enumerate(encs):
        for i, tag in enumerate(tags.ids):
            for j, trace in enumerate(e.traces):
                rows.append(sequence(e.prompt, tag, trace[:L], tag_loss=False))  # loss on trace only
                where.append((q, i, j))
    costs = [np.zeros((len(tags.ids), len(e.traces))) for e in encs]
    groups = even_batches(d, micro_batches([len(r[0]) for r in rows], budget))
    for g, nll, n in forward_rows(model, rows, groups, pad_id, d.device):
        for idx, s, count in zip(g, nll.tolist(), n.tolist()):  # one device sync per micro-batch
            q, i, j = where[idx]
            costs[q][i, j] = s / count
    return costs


def assign(mode, cost, seed, step, q):
    """sigma: the tag index of each trace. ssft: the min-cost matching of the grid; random: a
    random injective map, drawn from (seed, step, question) so any rank count draws the same."""
    n_tags, n_traces = cost.shape
    if mode == "ssft":
        tags, traces = linear_sum_assignment(cost)
        return tags[np.argsort(traces)]
    return np.random.default_rng([seed, step, q]).permutation(n_tags)[:n_traces]


def train_step(model, opt, rows, cfg, pad_id, d):
    """One optimizer step on this rank's rows. The loss is the sum of token NLLs divided by the
    number of loss tokens in the global batch (every token weighs the same, whichever rank or
    micro-batch holds it); FSDP averages gradients over ranks, hence the factor world."""
    tokens = d.sum(sum(sum(t != -100 for t in targets) for _, targets in rows))
    groups = even_batches(d, micro_batches([len(r[0]) for r in rows], cfg.micro_tokens))
    loss_sum = 0.0
    for g, nll, n in forward_rows(model, rows, groups, pad_id, d.device):
        (nll.sum() * d.world / max(tokens, 1)).backward()
        loss_sum += nll.sum().item()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    opt.step()
    opt.zero_grad(set_to_none=True)
    return d.sum(loss_sum) / max(tokens, 1), tokens, norm.item()


def ssft_step(model, opt, cfg, train, encs, tags, shared, pad_id, step, d):
    """One training step: this rank's questions, their cost grids and assignments (not in mixed
    mode), and the update. Returns the loss, the global loss tokens, the gradient norm, and per
    question (id, 1-based tags of its traces, mean matched cost, sources) for the log."""
    qs = step_questions(cfg, len(train), step, d)
    model.eval()  # Qwen2 has no dropout; eval() documents that the grid takes no gradients
    costs = cost_grid(model, [encs[q] for q in qs], tags, cfg.match_tokens, cfg.micro_tokens, pad_id, d) \
        if cfg.mode != "mixed" else None
    rows, record = [], []
    for k, q in enumerate(qs):
        sigma = assign(cfg.mode, costs[k], cfg.seed, step, q) if costs else None
        for j, trace in enumerate(encs[q].traces):
            tag = shared if sigma is None else tags.ids[sigma[j]]
            rows.append(sequence(encs[q].prompt, tag, trace, cfg.max_len, cfg.tag_loss))
        if sigma is not None:
            matched = float(costs[k][sigma, range(len(sigma))].mean())
            record.append((train[q].id, (sigma + 1).tolist(), matched, train[q].sources))
    for group in opt.param_groups:
        group["lr"] = lr_at(cfg, step)
    model.train()
    loss, tokens, norm = train_step(model, opt, rows, cfg, pad_id, d)
    return loss, tokens, norm, record


def lr_at(cfg, step):
    """Linear warm-up, then cosine decay to min_lr * lr, as a function of the step alone."""
    warm = max(1, round(cfg.warmup * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (cfg.min_lr + (1 - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t)))


def step_questions(cfg, n_questions, step, d):
    """This rank's share of the step's questions: a contiguous slice of a per-epoch permutation
    that depends only on (seed, step), so resuming and changing the rank count keep the data."""
    per_epoch = n_questions // cfg.batch
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([cfg.seed, epoch]).permutation(n_questions)
    batch = order[k * cfg.batch:(k + 1) * cfg.batch]
    return np.array_split(batch, d.world)[d.rank].tolist()


def run(cfg):
    d = setup_dist()
    out = Path(cfg.out)
    ckpt = find_checkpoint(out)
    state = None
    if cfg.resume:
        if ckpt is None:
            sys.exit(f"--resume: no checkpoint in {out}")
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        # The saved configuration, not the flags: a continuation must be the same run.
        cfg = TrainConfig(**{**state["config"], "out": cfg.out, "resume": True, "stop_after": cfg.stop_after})
    elif ckpt is not None and not cfg.overwrite:
        done = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        if done["step"] < done["config"]["steps"]:
            sys.exit(f"{out} holds an unfinished run (step {done['step']} of {done['config']['steps']}): "
                     "pass --resume to continue it or --overwrite to discard it")
    if cfg.batch % d.world:
        sys.exit(f"--batch {cfg.batch} must be a multiple of the {d.world} ranks")

    # Everything that can reject the input runs before anything is written to --out.
    train, held_out, tok, system = load_task(cfg, ckpt if state else None)
    if cfg.mode != "mixed" and cfg.num_tags < min(len(e.traces) for e in train):
        sys.exit(f"--num-tags {cfg.num_tags} is fewer than the traces of a question: each needs its own tag")
    encs = [encode_example(tok, e, system) for e in train]
    try:
        tags = forking_tags(tok, cfg.num_tags)
    except ValueError as e:
        sys.exit(f"error: --num-tags {cfg.num_tags}: {e}")
    shared = encode(tok, tag_text(None))
    pad_id = special_id(tok, "<|endoftext|>")
    too_long = sum(len(e.prompt) + len(tags.ids[0]) + len(t) - 1 > cfg.max_len for e in encs for t in e.traces)
    if cfg.batch > len(train):
        sys.exit(f"--batch {cfg.batch} is more than the {len(train)} questions")
    if d.main:
        print(f"{len(train)} questions, {sum(len(e.traces) for e in encs)} traces; "
              f"{too_long} sequences truncated to --max-len {cfg.max_len}; vocabulary {tok.get_vocab_size()}")

    config = None
    if not state and not Path(cfg.model).is_dir():
        config = Config.preset(cfg.model)
        if config.vocab_size < tok.get_vocab_size() or cfg.data == "synthetic":
            config.vocab_size = tok.get_vocab_size()  # a model trained from scratch fits its tokenizer
        torch.manual_seed(cfg.seed)
    source = ckpt if state else (cfg.model if Path(cfg.model).is_dir() else None)
    model = build_model(d, source, config)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing = True
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]  # biases and norm gains
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    start, last = 0, {}
    if state:
        load_optimizer(model, opt, state["optimizer"])
        start, last = state["step"], state["last_assignment"]

    metrics_path = out / "metrics.jsonl"
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        kept = [l for l in metrics_path.read_text().splitlines() if json.loads(l)["step"] <= start] \
            if state and metrics_path.exists() else []
        metrics_path.write_text("".join(l + "\n" for l in kept))  # drop steps after the checkpoint
    sources = sorted({s for e in train for s in (e.sources or [])})
    t0, done = time.time(), start
    for step in range(start, cfg.steps):
        tic = time.time()
        loss, tokens, norm, record = ssft_step(model, opt, cfg, train, encs, tags, shared, pad_id, step, d)
        record = [r for part in d.gather(record) for r in part]
        if d.main:
            log = {"step": step + 1, "loss": loss, "lr": lr_at(cfg, step), "grad_norm": norm, "tokens": tokens,
                   "seconds": time.time() - tic, **matching_stats(record, last, sources, cfg.num_tags)}
            with open(metrics_path, "a") as f:
                f.write(json.dumps(log) + "\n")
            progress(log, cfg, start, t0)
        done = step + 1
        if cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps:
            save_checkpoint(out, model, opt, tok, trainer_state(cfg, done, last), d)
        if cfg.stop_after and done - start >= cfg.stop_after:
            break
    if done > start:
        save_checkpoint(out, model, opt, tok, trainer_state(cfg, done, last), d)
        if d.main:
            print(f"saved {out / 'checkpoint'} at step {done}")
    if d.world > 1:
        dist.destroy_process_group()
    return cfg, out, held_out, done


def trainer_state(cfg, step, last):
    return {"step": step, "config": asdict(cfg), "last_assignment": last}


def matching_stats(record, last, sources, num_tags):
    """Mean matched cost, the assignment, the tags x sources histogram, and matching convergence:
    the share of questions seen before whose assignment changed since then. Updates `last`."""
    if not record:
        return {"match_cost": None, "assignment": None, "tag_source": None, "changed": None}
    hist = {s: [0] * num_tags for s in sources}
    seen = [q for q, *_ in record if q in last]
    changed = sum(last[q] != sigma for q, sigma, *_ in record if q in last)
    for q, sigma, _, srcs in record:
        last[q] = sigma
        for tag, s in zip(sigma, srcs or []):
            hist[s][tag - 1] += 1
    return {"match_cost": float(np.mean([c for _, _, c, _ in record])),
            "assignment": {q: sigma for q, sigma, *_ in record},
            "tag_source": hist or None, "changed": changed / len(seen) if seen else None}


def progress(log, cfg, start, t0):
    done = log["step"] - start
    rate = done / (time.time() - t0)
    eta = (cfg.steps - log["step"]) / rate
    extra = "" if log["match_cost"] is None else f" | cost {log['match_cost']:.3f}"
    extra += "" if log["changed"] is None else f" | changed {log['changed']:.0%}"
    if done % max(1, cfg.steps // 50) == 0 or log["step"] == cfg.steps:
        print(f"step {log['step']:>5}/{cfg.steps} | loss {log['loss']:.4f}{extra} | lr {log['lr']:.2e} "
              f"| {rate:.2f} step/s | eta {int(eta // 60)}m{int(eta % 60):02d}s", flush=True)


def main(argv=None):
    cfg = parse_args(argv)
    if cfg.plan:
        from plan import print_plan
        return print_plan(cfg)
    try:
        cfg, out, held_out, _ = run(cfg)
    except (DataError, FileNotFoundError) as e:  # bad data, or a missing model/tokenizer file
        sys.exit(f"error: {e}")
    if held_out and int(os.environ.get("RANK", 0)) == 0:
        from eval import SyntheticTask, evaluate_run
        evaluate_run(out, SyntheticTask(held_out), cfg.num_tags, shared=cfg.mode == "mixed")


if __name__ == "__main__":
    main()
