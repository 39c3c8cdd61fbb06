"""
SSFT: set supervised fine-tuning, with bipartite matching between forking tags and traces.

Every step, for each question with M traces and N tags <think1>..<thinkN> (N >= M):
  1. C[i, j] = mean NLL of the first L tokens of trace j after tag i, without gradients  (cost_grid)
  2. sigma = the min-cost matching of C: trace j gets its own tag sigma[j]               (assign)
  3. next-token loss on the M sequences (question, tag sigma[j], trace j): token NLLs summed
     and divided by the loss tokens of the global batch, so every token weighs the same (set_loss)
The baselines run the same code: --mode random draws sigma at random each step; --mode mixed
puts every trace under the one shared tag <think>. Tags are 0-based in the code and the logs
(sigma[j] = 0 is <think1>).

    python ssft.py                                    # the embedded demo: synthetic task, CPU ok
    python ssft.py --mode mixed --out out/mixed       # the same run with a baseline
    python ssft.py --model Qwen2.5-32B-Instruct/ --data s1k4.jsonl --out out/ssft32b \\
        --steps 320 --batch 16 --lr 1e-5 --weight-decay 1e-4 --match-tokens 1000 --max-len 16384
    torchrun --nproc_per_node=8 ssft.py --model ... # FSDP2; K ranks compute the same step as one
    python ssft.py --out out/ssft32b --resume         # after a crash, Ctrl-C or preemption
    python ssft.py --plan --model qwen2.5-32b --world-size 8 --max-len 16384   # memory per GPU
    python -m pytest -q test_ssft.py
"""
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import checkpoint
from batches import continuation_nll, forward_rows
from data import DataError, chat, encode, encode_example, forking_tags, load_traces, sequence, synthetic, tag_text
from data.tokenizer import load_tokenizer, special_id
from distributed import build_model, setup_world
from hungarian import linear_sum_assignment
from kernels import IGNORE_INDEX
from model import Config
from run import (Diverged, Progress, Run, RunConfig, Stop, UserError, adamw, arg, check_finite, model_dir,
                 parse_flags, script, step_items, stopped, user_input)

# -------------------------------------------------------------------------------------------------
# The three steps of the paper


@torch.no_grad()
def cost_grid(model, *, questions, tags, L, budget, world, pad_id):
    """C for each question, (N tags, M traces): C[i, j] = mean NLL of the first L tokens of trace j
    after tag i. questions: Encoded (prompt ids, trace ids); tags: the Tags. The question and the
    tag up to its forking token are the same in all N*M rows, so they are computed once per
    question and every row continues from there (batches.continuation_nll)."""
    prefixes = [q.prompt + tags.prefix for q in questions]
    rows, where = [], []
    for k, q in enumerate(questions):
        for i, tag in enumerate(tags.ids):
            for j, trace in enumerate(q.traces):
                ids = tag[tags.fork:] + trace[:L]  # the fork token, the rest of the tag, L trace tokens
                targets = [IGNORE_INDEX] * (len(tag) - tags.fork - 1) + trace[:L]  # loss on the trace only
                rows.append((k, ids[:-1], targets))
                where.append((k, i, j))
    nll, count = continuation_nll(model, prefixes, rows, budget, world, pad_id)
    C = [np.zeros((len(tags.ids), len(q.traces))) for q in questions]
    for (k, i, j), s, n in zip(where, nll, count):
        C[k][i, j] = s / n
    return C


def assign(C, *, mode, rng):
    """sigma (M,): sigma[j] is the tag of trace j, all different. ssft: the min-cost matching of
    C (N tags, M traces); random: a random injective map drawn from `rng`."""
    n_tags, n_traces = C.shape
    if mode == "ssft":
        tag_of, trace_of = linear_sum_assignment(C)
        return tag_of[np.argsort(trace_of)]
    return rng.permutation(n_tags)[:n_traces]


def set_loss(model, *, rows, budget, world, pad_id):
    """Gradients of the NTP loss on this rank's (ids, targets) rows: the summed token NLL divided by
    the loss tokens of the global batch, so that every token of the step weighs the same whichever
    rank or micro-batch holds it (FSDP sums gradients over ranks, see distributed.shard).
    Returns the global loss per token and the global number of loss tokens."""
    tokens = world.sum(sum(sum(t != IGNORE_INDEX for t in targets) for _, targets in rows))
    total = 0.0
    for _, nll_sum, n_tokens in forward_rows(model, rows, budget, world, pad_id):
        (nll_sum.sum() / tokens).backward()
        total += nll_sum.sum().item()
    return world.sum(total) / tokens, tokens


# -------------------------------------------------------------------------------------------------
# Configuration and data


@dataclass
class SSFTConfig(RunConfig):
    out: str = arg("out/ssft", "run directory: metrics.jsonl, checkpoint/ (sharded), model/ (HF format)", kind="out")
    mode: str = arg("ssft", "ssft: Hungarian matching; random: random tags; mixed: one shared tag",
                    choices=("ssft", "random", "mixed"))
    traces: int = arg(4, "M traces per question (the first M of each)", low=1)
    allow_fewer: bool = arg(False, "train questions with fewer than --traces traces instead of failing")
    match_tokens: int = arg(8, "L: trace tokens in the matching cost (the paper: 1000; the demo's "
                                  "strategies show in their first token)", low=1)
    tag_loss: bool = arg(True, "train on the tag tokens too (everything after the assistant header)")
    lr: float = arg(3e-3, "peak learning rate (s1 recipe for 32B: 1e-5)", above=0)
    train_questions: int = arg(synthetic.TRAIN_QUESTIONS, "synthetic task: training questions", low=1)
    eval_questions: int = arg(synthetic.HELD_OUT, "synthetic task: held-out questions evaluated at the end (0: none)",
                         low=0)


class Task:
    """What a run trains on, checked against the flags before anything is written: the examples
    (tokenised), the held-out questions of the synthetic task, the tokenizer, the tags."""

    def __init__(self, cfg, world, tokenizer=None):
        if cfg.data == "synthetic":
            if cfg.traces > len(synthetic.STRATEGIES):
                raise UserError(f"--traces {cfg.traces}: the synthetic task has {len(synthetic.STRATEGIES)} "
                                "traces per question")
            examples, self.held_out = synthetic.split(cfg.train_questions, cfg.eval_questions)
            self.tok = load_tokenizer(tokenizer) if tokenizer else synthetic.tokenizer_for(examples)
            system = synthetic.SYSTEM
            for ex in examples:
                ex.traces, ex.sources = ex.traces[:cfg.traces], ex.sources[:cfg.traces]
        else:
            examples, self.held_out = load_traces(cfg.data, cfg.traces, cfg.allow_fewer), []
            if not tokenizer and not Path(cfg.model).is_dir():
                raise UserError(f"--model {cfg.model} is a preset and --data a file: pass --tokenizer")
            self.tok, system = load_tokenizer(tokenizer or model_dir(cfg.model)), chat.SYSTEM
        self.examples = examples
        self.encoded = [encode_example(self.tok, ex, system) for ex in examples]
        try:
            self.tags = forking_tags(self.tok, cfg.num_tags)
        except ValueError as e:
            raise UserError(f"--num-tags {cfg.num_tags}: {e}") from None
        self.shared = encode(self.tok, tag_text(None))
        self.pad_id = special_id(self.tok, "<|endoftext|>")
        most = max(len(ex.traces) for ex in examples)
        if cfg.mode != "mixed" and cfg.num_tags < most:
            raise UserError(f"--num-tags {cfg.num_tags}: fewer than the {most} traces of a question, "
                            "each of which needs its own tag")
        if cfg.batch > len(examples) or cfg.batch % world.size:
            raise UserError(f"--batch {cfg.batch}: must be at most the {len(examples)} questions and a "
                            f"multiple of the {world.size} ranks")
        longest = max(len(q.prompt) for q in self.encoded) + len(self.tags.ids[0])
        if cfg.max_len < longest:  # a sequence must keep its tag and at least one trace token
            raise UserError(f"--max-len {cfg.max_len}: must be at least {longest}, the longest prompt and tag")
        self.truncated = sum(len(q.prompt) + len(self.tags.ids[0]) + len(t) - 1 > cfg.max_len
                             for q in self.encoded for t in q.traces)


# -------------------------------------------------------------------------------------------------
# The run


def train(cfg, given):
    world = setup_world()
    run = Run(cfg, given, world)
    cfg = run.cfg
    if run.finished:
        return cfg, run
    with user_input():
        task = Task(cfg, world, run.checkpoint / "tokenizer.json" if run.state else cfg.tokenizer)
    if world.main:
        print(f"{len(task.examples)} questions, {sum(len(q.traces) for q in task.encoded)} traces; "
              f"{task.truncated} sequences truncated to --max-len {cfg.max_len}; "
              f"vocabulary {task.tok.get_vocab_size()}")
    config = None
    if not Path(cfg.model).is_dir():  # a preset, trained from scratch, sized to its tokenizer
        config = Config.preset(cfg.model)
        if config.vocab_size < task.tok.get_vocab_size() or cfg.data == "synthetic":
            config.vocab_size = task.tok.get_vocab_size()
        torch.manual_seed(cfg.seed)
    with user_input():
        model = build_model(world, None if config else model_dir(cfg.model), config)
        model.gradient_checkpointing = cfg.activation_checkpointing
        opt = adamw(model, cfg.lr, cfg.weight_decay)
        last = {}  # question id -> its previous assignment, for the matching-convergence statistic
        if run.state:
            last = checkpoint.load(run.checkpoint, model, opt)["last_assignment"]
    run.open_metrics()
    sources = sorted({s for ex in task.examples for s in (ex.sources or [])})
    stop, progress = Stop(), Progress(cfg, run.start)
    try:
        for step in range(run.start, cfg.steps):
            t0 = time.time()
            # this rank's questions of the step
            qs = step_items(len(task.examples), cfg.batch, cfg.seed, step, world)
            # 1. the cost grid C (N tags, M traces) of each question, without gradients
            model.eval()  # Qwen2 has no dropout; eval() documents that the grid takes no gradients
            C = cost_grid(model, questions=[task.encoded[q] for q in qs], tags=task.tags, L=cfg.match_tokens,
                          budget=cfg.micro_tokens, world=world, pad_id=task.pad_id) if cfg.mode != "mixed" else None
            if C is not None:
                check_finite(step, run, match_cost=world.sum(float(sum(c.sum() for c in C))))
            # 2. the assignment: sigma[j] is the tag of trace j (mixed: the shared tag for all)
            rows, record = [], []
            for k, q in enumerate(qs):
                ex, enc = task.examples[q], task.encoded[q]
                sigma = assign(C[k], mode=cfg.mode, rng=np.random.default_rng([cfg.seed, step, q])) \
                    if C is not None else None
                for j, trace in enumerate(enc.traces):
                    tag = task.shared if sigma is None else task.tags.ids[sigma[j]]
                    rows.append(sequence(enc.prompt, tag, trace, cfg.max_len, cfg.tag_loss))
                if sigma is not None:
                    record.append((ex.id, sigma.tolist(), float(C[k][sigma, range(len(sigma))].mean()), ex.sources))
            # 3. the update: gradients of the set loss, then one AdamW step at the schedule's lr unless it diverged
            model.train()
            loss, tokens = set_loss(model, rows=rows, budget=cfg.micro_tokens, world=world, pad_id=task.pad_id)
            grad_norm = run.optimizer_step(model, opt, step, loss=loss)
            # log the step, save every --save-every steps, leave when asked to
            record = [r for part in world.gather(record) for r in part]
            log = {"step": step + 1, "loss": loss, "lr": opt.param_groups[0]["lr"], "grad_norm": grad_norm,
                   "tokens": tokens, "seconds": time.time() - t0, **matching_stats(record, last, sources, cfg.num_tags)}
            run.log(log)
            if world.main:
                progress.show(step, f"loss {loss:.4f}" + (f" | cost {log['match_cost']:.3f}" if C is not None else "")
                              + (f" | changed {log['changed']:.0%}" if log["changed"] is not None else ""))
            if run.end_step(step, stop,
                            lambda n: run.save(model, opt, task.tok, n, {"last_assignment": last})):
                break
        run.finish(model, task.tok)
    finally:
        stop.restore()
        world.close()
    return cfg, run


def matching_stats(record, last, sources, num_tags):
    """Mean matched cost, the assignment, the tags x sources histogram, and matching convergence:
    the share of questions seen before whose assignment changed since then. Updates `last`."""
    if not record:
        return {"match_cost": None, "assignment": None, "tag_source": None, "changed": None}
    hist = {s: [0] * num_tags for s in sources}
    seen = [qid for qid, *_ in record if qid in last]
    changed = sum(last[qid] != sigma for qid, sigma, *_ in record if qid in last)
    for qid, sigma, _, srcs in record:
        last[qid] = sigma
        for tag, s in zip(sigma, srcs or []):
            hist[s][tag] += 1
    return {"match_cost": float(np.mean([c for _, _, c, _ in record])),
            "assignment": {qid: sigma for qid, sigma, *_ in record},
            "tag_source": hist or None, "changed": changed / len(seen) if seen else None}


def main(argv=None):
    try:
        cfg, given = parse_flags(SSFTConfig, argv, __doc__.split("\n\n")[0])
        if cfg.plan:
            from plan import print_plan
            return print_plan(cfg)
        cfg, run = train(cfg, given)
    except (UserError, DataError, Diverged, checkpoint.SaveError) as e:  # one line, no traceback
        sys.exit(f"error: {e}")
    if run.signum:
        stopped(run, "ssft.py")
    if run.saved_step == cfg.steps and run.world.main and cfg.data == "synthetic" and cfg.eval_questions:
        from eval import SyntheticTask, evaluate_run
        evaluate_run(run.out, SyntheticTask(synthetic.split(cfg.train_questions, cfg.eval_questions)[1]), cfg.num_tags,
                     shared=cfg.mode == "mixed", samples=4, pass_samples=8)


if __name__ == "__main__":
    script(main)
