"""
SSFT: set supervised fine-tuning, with bipartite matching between forking tags and traces.

Every step, for each question with M traces and N tags <think1>..<thinkN> (N >= M):
  1. C[i, j] = mean NLL of the first L tokens of trace j after tag i, without gradients  (cost_grid)
  2. sigma = the min-cost matching of C: trace j gets its own tag sigma[j]               (assign)
  3. next-token loss on the M sequences (question, tag sigma[j], trace j): token NLLs summed
     and divided by the loss tokens of the global batch, so every token weighs the same (set_loss)
The baselines run the same code and differ only in step 2: --mode random draws sigma at random
each step; --mode mixed has one tag, the shared <think>, for every trace (its grid, 1 x M, is
logged as the matched cost, beside SSFT's: the NLL of the traces' openings under the one tag).
Tags are 0-based in the code and the logs (sigma[j] = 0 is <think1>).

    python ssft.py                                    # the embedded demo: synthetic task, CPU ok
    python ssft.py --mode mixed --out out/mixed       # the same run with a baseline
    python ssft.py --model Qwen2.5-32B-Instruct/ --data s1k4.jsonl --out out/ssft32b \\
        --steps 320 --batch 16 --lr 1e-5 --weight-decay 1e-4 --match-tokens 1000 --max-len 16384
    torchrun --nproc_per_node=8 ssft.py --model ... # FSDP2; K ranks compute the same step as one
    torchrun --nproc_per_node=8 ssft.py ... --activation-checkpointing --cpu-offload   # 32B on 8 x 80 GB
    python ssft.py --out out/ssft32b --resume         # after a crash, Ctrl-C or preemption
    python ssft.py --plan --model qwen2.5-32b --world-size 8 --max-len 16384   # memory per GPU
    python -m pytest -q test_ssft.py
"""
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

import checkpoint
from batches import continuation_nll, forward_rows
from data import (DataError, Tags, chat, encode, encode_example, forking_tags, load_traces, sequence, synthetic,
                  tag_text)
from data.tokenizer import load_tokenizer, special_id
from distributed import build_model, setup_world
from flags import UserError, arg, model_dir, parse_flags, user_input
from hungarian import linear_sum_assignment
from kernels import IGNORE_INDEX
from model import Config
from run import Diverged, Progress, Run, RunConfig, Stop, adamw, check_finite, script, step_items, stopped
from tasks import load_task

# -------------------------------------------------------------------------------------------------
# The three steps of the paper


@torch.no_grad()
def cost_grid(model, *, questions, tags, L, budget, world, pad_id):
    """C (N tags, M traces) for each question, without gradients:

        C[i, j] = mean NLL(trace_j[:L] | x, tag_i) = -(1/L) sum_{t<L} log p(trace_j[t] | x, tag_i, trace_j[:t])

    questions: Encoded (prompt ids, trace ids); tags: the Tags. Computed with the question and the
    tag up to its forking token scored once per question, the N*M continuations (the rest of the
    tag and L trace tokens) attending to its cached keys and values (batches.continuation_nll);
    test_ssft.py::test_grid_is_the_mean_nll_of_each_pair checks it against the definition."""
    prefixes = [enc.prompt + tags.before_fork for enc in questions]
    continuations, where = [], []
    for k, enc in enumerate(questions):
        for i, tag in enumerate(tags.ids):
            for j, trace in enumerate(enc.traces):
                ids = tag[tags.fork:] + trace[:L]  # the fork token, the rest of the tag, L trace tokens
                targets = [IGNORE_INDEX] * (len(tag) - tags.fork - 1) + trace[:L]  # loss on the trace only
                continuations.append((k, ids[:-1], targets))
                where.append((k, i, j))
    nll, count = continuation_nll(model, prefixes, continuations, budget, world, pad_id)
    C = [np.zeros((len(tags.ids), len(enc.traces))) for enc in questions]
    for (k, i, j), s, n in zip(where, nll, count):
        C[k][i, j] = s / n
    return C


def assign(C, *, mode, rng):
    """sigma (M,): sigma[j] is the tag of trace j, a row of C (N tags, M traces).
    ssft: the min-cost matching of C, all tags different; random: a random injective map drawn
    from `rng`; mixed: the one shared tag (C has one row) for every trace."""
    n_tags, n_traces = C.shape
    if mode == "ssft":
        tag_idx, trace_idx = linear_sum_assignment(C)  # pairs (tag_idx[k], trace_idx[k]), every trace once
        sigma = np.empty(n_traces, dtype=int)
        sigma[trace_idx] = tag_idx
        return sigma
    if mode == "random":
        return rng.permutation(n_tags)[:n_traces]
    return np.zeros(n_traces, dtype=int)


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


class TrainingSet:
    """What a run trains on, checked against the flags before anything is written: the examples
    (tokenised), the held-out questions of the synthetic task, the tokenizer, and the tags a trace
    may get (the N forking tags; in mixed mode the one shared tag)."""

    def __init__(self, cfg, world, tokenizer=None):
        if cfg.data in synthetic.TASKS:
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
        if cfg.mode == "mixed":  # one tag, nothing before its "fork": the grid scores it after the prompt
            think = encode(self.tok, tag_text(None))
            self.tags = Tags([think], fork=0, fork_ids=think[:1])
        else:
            try:
                self.tags = forking_tags(self.tok, cfg.num_tags)
            except ValueError as e:
                raise UserError(f"--num-tags {cfg.num_tags}: {e}") from None
        self.pad_id = special_id(self.tok, "<|endoftext|>")
        most = max(len(ex.traces) for ex in examples)
        if cfg.mode != "mixed" and cfg.num_tags < most:
            raise UserError(f"--num-tags {cfg.num_tags}: fewer than the {most} traces of a question, "
                            "each of which needs its own tag")
        if cfg.batch > len(examples) or cfg.batch % world.size:
            raise UserError(f"--batch {cfg.batch}: must be at most the {len(examples)} questions and a "
                            f"multiple of the {world.size} ranks")
        longest = max(len(enc.prompt) for enc in self.encoded) + len(self.tags.ids[0])
        if cfg.max_len < longest:  # a sequence must keep its tag and at least one trace token
            raise UserError(f"--max-len {cfg.max_len}: must be at least {longest}, the longest prompt and tag")
        self.truncated = sum(len(enc.prompt) + len(self.tags.ids[0]) + len(t) - 1 > cfg.max_len
                             for enc in self.encoded for t in enc.traces)


# -------------------------------------------------------------------------------------------------
# The run


class Match(NamedTuple):
    """One question's assignment in a step, for the log."""
    question_id: str
    sigma: list  # sigma[j]: the tag of trace j
    cost: float  # mean over the traces of C[sigma[j], j]
    sources: list  # the teacher of each trace, or None


def train(cfg, given):
    world = setup_world()
    with Run(cfg, given, world) as run:  # holds the run directory until the run ends
        cfg = run.cfg
        if run.finished:
            return cfg, run
        with user_input():
            data = TrainingSet(cfg, world, run.checkpoint / "tokenizer.json" if run.state else cfg.tokenizer)
        if world.main:
            print(f"{len(data.examples)} questions, {sum(len(enc.traces) for enc in data.encoded)} traces; "
                  f"{data.truncated} sequences truncated to --max-len {cfg.max_len}; "
                  f"vocabulary {data.tok.get_vocab_size()}")
        config = None
        if not Path(cfg.model).is_dir():  # a preset, trained from scratch, sized to its tokenizer
            config = Config.preset(cfg.model)
            if config.vocab_size < data.tok.get_vocab_size() or cfg.data in synthetic.TASKS:
                config.vocab_size = data.tok.get_vocab_size()
            torch.manual_seed(cfg.seed)
        with user_input():
            model = build_model(world, None if config else model_dir(cfg.model), config)
            model.gradient_checkpointing = cfg.activation_checkpointing
            opt = adamw(model, cfg.lr, cfg.weight_decay)
            last = {}  # question id -> its previous assignment, for the matching-convergence statistic
            if run.state:
                last = checkpoint.load(run.checkpoint, model, opt)["last_assignment"]
        run.open_metrics()
        sources = sorted({s for ex in data.examples for s in (ex.sources or [])})
        stop, progress = Stop(), Progress(cfg, run.start)
        try:
            for step in range(run.start, cfg.steps):
                t0 = time.time()
                qs = step_items(len(data.examples), cfg.batch, cfg.seed, step, world)  # this rank's questions
                # 1. the cost grid C (tags, M traces) of each question, without gradients
                model.eval()  # Qwen2 has no dropout; eval() documents that the grid takes no gradients
                C = cost_grid(model, questions=[data.encoded[q] for q in qs], tags=data.tags, L=cfg.match_tokens,
                              budget=cfg.micro_tokens, world=world, pad_id=data.pad_id)
                # summed over ranks, so that every rank reaches the same verdict and all stop at this step
                # (a rank that stopped alone would leave the others waiting in their next collective)
                check_finite(step, run, match_cost=world.sum(float(sum(c.sum() for c in C))))
                # 2. sigma[j], the tag of trace j of each question, and its training sequences
                rows, matches = [], []
                for q, c in zip(qs, C):
                    ex, enc = data.examples[q], data.encoded[q]
                    sigma = assign(c, mode=cfg.mode, rng=np.random.default_rng([cfg.seed, step, q]))
                    rows += [sequence(enc.prompt, data.tags.ids[tag], trace, cfg.max_len, cfg.tag_loss)
                             for tag, trace in zip(sigma, enc.traces)]
                    matches.append(Match(ex.id, sigma.tolist(), float(c[sigma, range(len(sigma))].mean()), ex.sources))
                # 3. the update: gradients of the set loss, then one AdamW step at the schedule's lr unless it diverged
                model.train()
                loss, tokens = set_loss(model, rows=rows, budget=cfg.micro_tokens, world=world, pad_id=data.pad_id)
                grad_norm = run.optimizer_step(model, opt, step, loss=loss)
                # log the step, save every --save-every steps, leave when asked to
                matches = [m for part in world.gather(matches) for m in part]
                log = {"step": step + 1, "loss": loss, "lr": opt.param_groups[0]["lr"], "grad_norm": grad_norm,
                       "tokens": tokens, "seconds": time.time() - t0,
                       **matching_stats(matches, last, sources, len(data.tags.ids))}
                run.log(log)
                if world.main:
                    progress.show(step, f"loss {loss:.4f} | cost {log['match_cost']:.3f}"
                                  + (f" | changed {log['changed']:.0%}" if log["changed"] is not None else ""))
                if run.end_step(step, stop,
                                lambda n: run.save(model, opt, data.tok, n, {"last_assignment": last})):
                    break
            run.finish(model, data.tok)
        finally:
            stop.restore()
            world.close()
    return cfg, run


def matching_stats(matches, last, sources, num_tags):
    """Mean matched cost, the assignment, the tags x sources histogram, and matching convergence:
    the share of questions seen before whose assignment changed since then. Updates `last`."""
    hist = {s: [0] * num_tags for s in sources}
    seen = [m for m in matches if m.question_id in last]
    changed = sum(last[m.question_id] != m.sigma for m in seen)
    for m in matches:
        last[m.question_id] = m.sigma
        for tag, source in zip(m.sigma, m.sources or []):
            hist[source][tag] += 1
    return {"match_cost": float(np.mean([m.cost for m in matches])),
            "assignment": {m.question_id: m.sigma for m in matches},
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
    if run.saved_step == cfg.steps and run.world.main and cfg.data in synthetic.TASKS and cfg.eval_questions:
        from eval import evaluate_run  # the demo ends with the report on its held-out questions
        evaluate_run(run.out, load_task(cfg.data, train_questions=cfg.train_questions, held_out=cfg.eval_questions),
                     cfg.num_tags, shared_tag=cfg.mode == "mixed")


if __name__ == "__main__":
    script(main)
