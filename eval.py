"""
Evaluation of a model with forking tags, computed as the paper's official evaluation computes it
(metrics.py holds the metric functions and says which official one each equals).

The task (tasks.py: the synthetic task's held-out questions, or a benchmark file) gives the
questions, the prompt, the answer budget and the grading; sampling.py the seeded generation and the
fork policy. Four runs per question, sampled at the paper's temperature 0.7 and top-p 0.95 unless
told otherwise, each sample seeded by (seed, run, question, tag, sample) so that no batch size or
rank count changes it:
- tags: S samples of every tag <think1>..<thinkN>, the array answers[q][i][s] that every tag
  metric derives from: cons@N, the paper's native Cons@N (one sample per tag, majority vote, mean
  over the S groups); cons@k, the benchmark's Cons@k variant (metrics.CONS32_VARIANT) at k = N,
  N*S and 32 (neither for code, which has no votes: LiveCodeBench reports pass@1); pass@k_tags,
  pass@k over all N*S samples; per_tag accuracy and mean length in tokens ("reasoning effort");
  pass@1_tag, the accuracy of the tag matched to most traces in training (the paper's choice, from
  metrics.jsonl).
- think1: n samples of <think1>: pass@1 and the pass@k curve (metrics.PASS_KS), as officially
  computed from a run of their own.
- self: the model's own choice of tag. tag_distribution: sampling.fork_statistics at the forking
  token (the mean over questions of P(tag i | question), the entropy of that mean, the mean
  per-question entropy, the mass outside the N tags); pass@1_self: n samples whose forking token
  is drawn from the fork policy, the N tags at the sampling temperature.
- greedy: one greedy answer per tag: greedy_cons@N (their vote; not for code) and greedy_oracle
  (some tag right: what choosing the tag per question, GFPO's job, could reach).
Each distinct answer of a question is graded once (a vote winner is one of them: one sandbox run
per distinct program, one comparison per distinct math answer).
For a task that tells strategies apart (the synthetic one) also the tags x strategies tables
(sampled, greedy), purity (share of generations whose strategy is their tag's most common one) and
distinct strategies per question across the N tags (greedy, and within one sampled group). A
model trained with one shared tag (--shared-tag) is prompted with <think> in every slot and has no
self run.

    python eval.py --model out/ssft                                    # the demo's held-out questions
    python eval.py --model runs/ssft32b --data ../shared/data/aime24.jsonl    # the paper's protocol
    python eval.py --model out/ssft --temperatures 0.3,0.5,0.7,1.0     # accuracy against diversity
    python -m pytest -q test_eval.py
"""
import json
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

import integrity
import metrics
from data import DataError, synthetic
from data.tokenizer import load_tokenizer
from distributed import World, compute_dtype
from flags import UserError, arg, model_dir, parse_flags, user_input
from model import Qwen2
from run import read_metrics
from sampling import LocalEngine, chat_prompts, draw_forks, fork_logits, fork_policy, fork_statistics, sample
from tasks import load_task

# Each run draws from its own seeds: sample s of question q under tag i in run r is seeded by
# (seed, r, q, i, s); the self run's forking tokens are drawn with (seed, SELF_FORKS, q, 0, s).
TAGS, THINK1, SELF, GREEDY, SELF_FORKS = range(5)
FORK_BUDGET = 8192  # padded tokens per pass when scoring the forking token of every question


def evaluate(model, tok, task, *, num_tags, samples=0, pass_samples=0, temperature=0.7, top_p=0.95, max_new=0,
             seed=0, shared_tag=False, coverage=None, greedy=True):
    """Every metric of the module docstring, as a JSON-able dict. samples (S), pass_samples (n) and
    max_new: 0 takes the task's own (tasks.py)."""
    model.eval()
    Q, N = len(task.questions), num_tags
    S, n = samples or task.samples, pass_samples or task.pass_samples
    prompts = chat_prompts(tok, task, N, shared_tag)
    max_new = max_new or task.max_new
    settings = dict(temperature=temperature, top_p=top_p, max_new=max_new, stop=prompts.stop)
    engine = LocalEngine(model)

    def decode(ids):
        return tok.decode(ids, skip_special_tokens=True)

    # the tags run: S samples of every tag, texts[q][i][s]
    gen = sample(engine, (Q, N, S), lambda q, i, s: (prompts.ids[q], prompts.slots[i], (seed, TAGS, q, i, s)),
                 **settings)
    texts = [[[decode(ids) for ids in tag] for tag in by_tag] for by_tag in gen]
    lengths = np.array([[[len(ids) for ids in tag] for tag in by_tag] for by_tag in gen])  # (Q, N, S)
    answers = [[[task.extract(t, q) for t in tag] for tag in by_tag] for q, by_tag in enumerate(texts)]
    graded = [{} for _ in range(Q)]  # graded[q][answer]: each distinct answer graded once, vote winners too

    def right(q, answer):
        if answer not in graded[q]:
            graded[q][answer] = task.right(answer, q)
        return graded[q][answer]

    ok = np.array([[[right(q, a) for a in tag] for tag in answers[q]] for q in range(Q)])  # (Q, N, S)
    report = {
        "questions": Q, "num_tags": N, "shared_tag": shared_tag, "samples_per_tag": S, "pass_samples": n,
        "temperature": temperature, "top_p": top_p, "max_new": max_new,
        # pass@k over the N*S samples of all tags: the diversity that forking adds (k = N: one per tag)
        "pass@k_tags": {k: float(np.mean([metrics.pass_at_k(N * S, int(c), k) for c in ok.reshape(Q, -1).sum(1)]))
                        for k in (1, N)},
        "per_tag": [{"tag": f"<think{i + 1}>", "accuracy": float(ok[:, i].mean()),
                     "mean_length": float(lengths[:, i].mean())} for i in range(N)],
    }
    if task.votes:  # code has none: LiveCodeBench reports pass@1 alone
        variant = metrics.CONS32_VARIANT.get(task.name, "maj_sot")
        ks = sorted({k for k in (N, N * S, 32) if k <= N * S})
        # a Cons@k winner is right when it == the gold value or, where there is none (GPQA), when graded right
        winner = [task.gold(q) if task.gold(q) is not None else partial(right, q) for q in range(Q)]
        report["cons@N"] = float(np.mean([metrics.native_cons(answers[q], partial(right, q)) for q in range(Q)]))
        report["cons@k_variant"] = variant
        report["cons@k"] = {k: float(np.mean([metrics.CONS32_FN[variant](answers[q], winner[q], k) for q in range(Q)]))
                            for k in ks}
    if coverage is not None:
        report["pass@1_tag"] = {"tag": f"<think{coverage + 1}>", "accuracy": report["per_tag"][coverage]["accuracy"]}
    # the think1 run: pass@1 and the pass@k curve
    gen = sample(engine, (Q, n), lambda q, s: (prompts.ids[q], prompts.slots[0], (seed, THINK1, q, 0, s)), **settings)
    c = [sum(right(q, task.extract(decode(ids), q)) for ids in gen[q]) for q in range(Q)]
    report["pass@k"] = {k: float(np.mean([metrics.pass_at_k(n, cq, k) for cq in c]))
                        for k in sorted({1, *[k for k in metrics.PASS_KS.get(task.name, (N, n)) if k <= n]})}
    report["pass@1"] = report["pass@k"][1]
    # the self run: the model draws its own tag, n times per question
    if not shared_tag:
        world = World(device=next(model.parameters()).device)
        logits = fork_logits(model, prompts, range(Q), FORK_BUDGET, world)  # (Q, V)
        report["tag_distribution"] = fork_statistics(logits, prompts.tags, world)
        forks = draw_forks(fork_policy(logits, prompts.tags, temperature),
                           [[(seed, SELF_FORKS, q, 0, s) for s in range(n)] for q in range(Q)])  # (Q, n)
        gen = sample(engine, (Q, n), lambda q, s: (prompts.ids[q], prompts.slots[int(forks[q, s])],
                                                  (seed, SELF, q, int(forks[q, s]), s)), **settings)
        report["pass@1_self"] = float(np.mean([right(q, task.extract(decode(ids), q)) for q in range(Q)
                                               for ids in gen[q]]))
    # the greedy run: one answer per tag
    if greedy:
        gen = sample(engine, (Q, N), lambda q, i: (prompts.ids[q], prompts.slots[i], (seed, GREEDY, q, i, 0)),
                     **{**settings, "temperature": 0.0})
        g_texts = [[decode(ids) for ids in by_tag] for by_tag in gen]  # g_texts[q][i]
        g_ans = [[task.extract(t, q) for t in by_tag] for q, by_tag in enumerate(g_texts)]
        g_ok = np.array([[right(q, a) for a in g_ans[q]] for q in range(Q)])  # (Q, N)
        if task.votes:
            report["greedy_cons@N"] = float(np.mean([right(q, metrics.vote(g_ans[q])) for q in range(Q)]))
        report["greedy_oracle"] = float(g_ok.any(1).mean())
        for i in range(N):
            report["per_tag"][i]["greedy_accuracy"] = float(g_ok[:, i].mean())
    if task.strategies:  # a task that tells strategies apart (the synthetic one): which tag writes which
        report.update(strategy_report(task, texts, g_texts if greedy else None))
    return report


def strategy_report(task, texts, greedy_texts=None):
    """The tags x strategies tables, purity and distinct strategies per question, of the tags run's
    texts[q][i][s] (and of the greedy run's greedy_texts[q][i])."""
    names = list(task.strategies)
    strat = [[[task.classify(t) for t in tag] for tag in by_tag] for by_tag in texts]  # (Q, N, S)
    tags = [i for by_tag in strat for i, tag in enumerate(by_tag) for _ in tag]
    flat = [x for by_tag in strat for tag in by_tag for x in tag]
    S = len(strat[0][0])
    out = {"strategies": names, "purity": metrics.purity(tags, flat),
           "distinct_sampled": metrics.distinct([[tag[s] for tag in by_tag] for by_tag in strat for s in range(S)]),
           "table": metrics.strategy_table(tags, flat, len(strat[0]), names)}
    if greedy_texts is not None:
        g_strat = [[task.classify(t) for t in by_tag] for by_tag in greedy_texts]  # (Q, N)
        g_tags = [i for by_tag in g_strat for i in range(len(by_tag))]
        g_flat = [x for by_tag in g_strat for x in by_tag]
        out.update({"purity_greedy": metrics.purity(g_tags, g_flat), "distinct": metrics.distinct(g_strat),
                    "table_greedy": metrics.strategy_table(g_tags, g_flat, len(g_strat[0]), names)})
    return out


def format_report(r):
    N = r["num_tags"]
    first = f"pass@1 (<think1>) {r['pass@1']:.3f}   "
    if "pass@1_tag" in r:
        first += f"pass@1 ({r['pass@1_tag']['tag']}, by coverage) {r['pass@1_tag']['accuracy']:.3f}   "
    if "pass@1_self" in r:
        first += f"pass@1 (own tag) {r['pass@1_self']:.3f}   "
    first += (f"cons@{N} {r['cons@N']:.3f}   " if "cons@N" in r else "") + "   ".join(
        f"pass@{k} {v:.3f}" for k, v in r["pass@k"].items() if int(k) > 1)
    lines = [first]
    if "greedy_oracle" in r:
        lines.append(f"greedy over the {N} tags: " + (f"majority {r['greedy_cons@N']:.3f}, " if "greedy_cons@N" in r
                                                      else "") + f"any tag right {r['greedy_oracle']:.3f}")
    if "tag_distribution" in r:
        d = r["tag_distribution"]
        lines.append("P(tag | question), mean: " + " ".join(f"{p:.2f}" for p in d["mean"])
                     + f"   entropy of the mean {d['entropy_of_mean']:.2f} nats, mean entropy "
                       f"{d['mean_entropy']:.2f}, outside the tags {d['outside']:.3f}")
    for title, key, acc in (("sampled, T=%.1f" % r["temperature"], "table", "accuracy"),
                            ("greedy", "table_greedy", "greedy_accuracy")):
        if key in r:
            names = r["strategies"] + ["none"]
            lines.append(f"\ntags x strategies ({title})\n{'tag':<10}" + "".join(f"{s:>10}" for s in names)
                         + f"{'accuracy':>10}")
            for i, row in enumerate(r[key]):
                label = f"<think>#{i + 1}" if r["shared_tag"] else f"<think{i + 1}>"
                lines.append(f"{label:<10}" + "".join(f"{c:>10}" for c in row) + f"{r['per_tag'][i][acc]:>10.2f}")
    if "purity" in r:
        greedy = f" (greedy {r['purity_greedy']:.3f})" if "purity_greedy" in r else ""
        lines.append(f"\npurity {r['purity']:.3f}{greedy}   distinct strategies per question: "
                     + (f"greedy {r['distinct']:.2f}, " if "distinct" in r else "")
                     + f"sampled {r['distinct_sampled']:.2f}")
    return "\n".join(lines)


def coverage_tag(metrics_path):
    """The tag (0-based) matched to the most distinct (question, trace) pairs over training, read
    from an ssft.py metrics.jsonl: the paper's choice of the Pass@1 tag. None without assignments."""
    pairs = {}
    for record in read_metrics(metrics_path):
        for qid, sigma in (record.get("assignment") or {}).items():
            for j, tag in enumerate(sigma):
                pairs.setdefault(tag, set()).add((qid, j))
    return max(pairs, key=lambda t: (len(pairs[t]), -t)) if pairs else None


def load(path):
    """A model (in the compute dtype) and its tokenizer from a HF model directory or a run directory."""
    path = model_dir(path)
    integrity.verify(path, advice=integrity.MODEL_ADVICE)  # a run's model/ carries checksums: read them all
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return Qwen2.from_pretrained(path, device, compute_dtype(device)), load_tokenizer(path)


def evaluate_run(model_path, task, num_tags, *, shared_tag=False, out_file=None, temperatures=None, **kwargs):
    """Evaluate a checkpoint or a run directory, print the report, write it as JSON (default:
    eval.json beside the model) and, for a run with matplotlib installed, the plots."""
    with user_input():
        model, tok = load(model_path)
    run_dir = Path(model_path)
    metrics_file = run_dir / "metrics.jsonl"
    coverage = coverage_tag(metrics_file) if metrics_file.exists() and not shared_tag else None
    if temperatures:
        report = {str(t): evaluate(model, tok, task, num_tags=num_tags, shared_tag=shared_tag, coverage=coverage,
                                   greedy=False, **{**kwargs, "temperature": t}) for t in temperatures}
        for t, r in report.items():
            cons = f"cons@{num_tags} {r['cons@N']:.3f}  " if "cons@N" in r else ""
            print(f"T={t}: pass@1 {r['pass@1']:.3f}  {cons}"
                  + "  ".join(f"pass@{k} {v:.3f}" for k, v in r["pass@k"].items() if int(k) > 1))
    else:
        report = evaluate(model, tok, task, num_tags=num_tags, shared_tag=shared_tag, coverage=coverage, **kwargs)
        print(format_report(report))
    out_file = Path(out_file or run_dir / ("eval_temperatures.json" if temperatures else "eval.json"))
    out_file.write_text(json.dumps(report, indent=2))
    print(f"wrote {out_file}")
    if metrics_file.exists() and not temperatures:
        try:
            from plots import plot_run
            plot_run(run_dir, report)
        except ImportError as e:
            print(f"no plots ({e}); pip install matplotlib to get them")
    return report


@dataclass
class EvalConfig:
    model: str = arg("out/ssft", "a HF model directory or a run directory (its model/)", kind="checkpoint")
    data: str = arg("synthetic", "'synthetic' or 'synthetic-short' (the held-out questions of ssft.py) or a JSONL "
                                 "benchmark", kind="data")
    num_tags: int = arg(6, "N: tags <think1>..<thinkN> (with --shared-tag: slots of <think>)", low=2)
    samples: int = arg(0, "S: samples per tag in the tags run (0: the task's, the official count where known)",
                       low=0)
    pass_samples: int = arg(0, "n: samples of <think1> and of the model's own tag (0: the task's)", low=0)
    temperature: float = arg(0.7, "sampling temperature", low=0)
    top_p: float = arg(0.95, "nucleus sampling", above=0, high=1)
    temperatures: str = arg("", "comma-separated temperatures: evaluate at each (eval_temperatures.json)")
    max_new: int = arg(0, "new tokens per sample (0: the task's: twice the longest synthetic solution; 32768)", low=0)
    questions: int = arg(synthetic.HELD_OUT, "synthetic: held-out questions", low=1)
    train_questions: int = arg(synthetic.TRAIN_QUESTIONS, "synthetic: ssft.py's training questions (held-out follow)",
                               low=1)
    seed: int = arg(0, "sampling seed", low=0)
    shared_tag: bool = arg(False, "a mixed-mode model: prompt every slot with the shared tag <think>")
    out: str = arg("", "where to write the report (default: eval.json beside the model)")


def main(argv=None):
    try:
        cfg, _ = parse_flags(EvalConfig, argv, "Evaluate a model with forking tags.")
        try:
            temperatures = [float(t) for t in cfg.temperatures.split(",")] if cfg.temperatures else None
        except ValueError:
            temperatures = [-1.0]
        if temperatures and min(temperatures) < 0:
            raise UserError(f"--temperatures {cfg.temperatures}: must be comma-separated numbers, each at least 0")
        task = load_task(cfg.data, train_questions=cfg.train_questions, held_out=cfg.questions)
        evaluate_run(cfg.model, task, cfg.num_tags, shared_tag=cfg.shared_tag, out_file=cfg.out or None,
                     temperatures=temperatures, samples=cfg.samples, pass_samples=cfg.pass_samples,
                     temperature=cfg.temperature, top_p=cfg.top_p, max_new=cfg.max_new, seed=cfg.seed)
    except (UserError, DataError) as e:  # the user's input: one line, no traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
