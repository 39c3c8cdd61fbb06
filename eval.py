"""
Evaluation of a model with forking tags: Pass@1, native Cons@N, Cons@k, Pass@k, per-tag statistics,
and for the synthetic task the tags x strategies table, purity and distinct strategies.

Protocol (the paper's, reference/paper.md §9-10): sample at temperature 0.7, top_p 0.95.
- pass@1: mean accuracy of the <think1> samples; pass@1_tag: the same for the tag chosen by
  coverage, the one matched to the most distinct (question, trace) pairs in training (read from
  the run's metrics.jsonl when there is one).
- greedy_cons@N and greedy_oracle: the majority of the N tags' greedy answers, and whether any of
  them is right (the headroom for choosing the tag per question, which GFPO learns).
- cons@N (native): each group of samples holds one sample per tag; majority vote per group
  (ties go to the answer seen first, in tag order), scored 0/1 and averaged over groups.
- cons@k: the first k samples in round-robin tag order (group-major), majority vote.
- pass@k: 1 - C(n-c, k) / C(n, k) over all n = N * groups samples of a question (unbiased).
- per_tag: accuracy and mean length in tokens of each tag's samples.
- Synthetic task only: `table` counts tags x strategies over the samples; purity is the share of
  samples whose strategy is their tag's most common one (no strategy counts as one more kind);
  distinct is the mean number of different strategies per question across the N tags under greedy
  decoding (distinct_sampled: across one group of samples). purity_greedy and table_greedy are the
  greedy counterparts.

    python eval.py --model out/ssft --data synthetic --num-tags 6 --samples 4 --out eval.json
    python eval.py --model Qwen2.5-SSFT/ --data ../shared/data/aime24.jsonl --samples 11 --max-new 32768
    python -m pytest -q test_eval.py
"""
import argparse
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from data import DataError, encode, forking_tags, prompt_text, tag_text
from data.chat import SYSTEM
from data.tokenizer import load_tokenizer, special_id
from model import Qwen2


# -------------------------------------------------------------------------------------------------
# Metrics: pure functions of answers, tested against hand-computed values


def pass_at_k(n, c, k):
    """Unbiased estimate of P(at least one of k draws without replacement from n samples, of which
    c are correct, is correct) = 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def majority(answers):
    """The most common non-None answer; ties go to the one that appears first; None if none."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def cons_native(groups, gold):
    """groups[g][i]: the answer of tag i in sample group g. Mean 0/1 score of the group votes."""
    return float(np.mean([majority(g) == gold for g in groups]))


def cons_at_k(groups, gold, k):
    """Majority vote over the first k answers in round-robin tag order (group 0's tags, then
    group 1's, ...)."""
    flat = [a for g in groups for a in g]
    if k > len(flat):
        raise ValueError(f"cons@{k} needs {k} samples, got {len(flat)}")
    return float(majority(flat[:k]) == gold)


def purity(tags, strategies):
    """Share of generations whose strategy is the most common one of their tag."""
    by_tag = {}
    for t, s in zip(tags, strategies):
        by_tag.setdefault(t, Counter())[s] += 1
    return sum(c.most_common(1)[0][1] for c in by_tag.values()) / max(1, len(tags))


def distinct(per_question):
    """Mean number of different (non-None) strategies in each question's list of strategies."""
    return float(np.mean([len({s for s in q if s is not None}) for q in per_question]))


def strategy_table(tags, strategies, num_tags, names):
    """Counts table[tag][strategy] with a final column for generations of no known strategy."""
    table = [[0] * (len(names) + 1) for _ in range(num_tags)]
    for t, s in zip(tags, strategies):
        table[t][names.index(s) if s in names else len(names)] += 1
    return table


# -------------------------------------------------------------------------------------------------
# Math answers (benchmark files): the last \boxed{...}, compared after light normalisation


def last_boxed(text):
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    depth, j = 0, i
    while 0 <= j < len(text):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
        j += 1
    return None


def normalize_math(ans):
    if ans is None:
        return None
    ans = re.sub(r"\\(left|right|!|,|;|displaystyle)|\$|\s", "", ans)
    ans = re.sub(r"\\text\{(.*?)\}", r"\1", ans).replace("dfrac", "frac").replace("tfrac", "frac")
    ans = ans.rstrip(".")
    try:
        return str(float(ans.replace(",", ""))).removesuffix(".0")
    except ValueError:
        return ans


# The math prompt of the authors' evaluation (LightEval's AIME/MATH-500 tasks).
MATH_PROMPT = ("Solve the following math problem efficiently and clearly.  The last line of your response "
               "should be of the following format: 'Therefore, the final answer is: $\\boxed{{ANSWER}}$. "
               "I hope it is correct' (without quotes) where ANSWER is just the final number or expression "
               "that solves the problem. Think step by step before answering.\n\n{question}")


class MathTask:
    """Questions and answers from a JSONL benchmark (fields question or problem, and answer)."""

    def __init__(self, path):
        self.rows = []
        for n, line in enumerate(Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, n, None, f"invalid JSON ({e.msg})") from None
            q = obj.get("question", obj.get("problem"))
            if not isinstance(q, str) or "answer" not in obj:
                raise DataError(path, n, "question", "needs a string 'question' (or 'problem') and an 'answer'")
            self.rows.append((MATH_PROMPT.format(question=q), normalize_math(str(obj["answer"]))))
        self.strategies, self.system = None, SYSTEM

    def answer(self, text):
        return normalize_math(last_boxed(text))


class SyntheticTask:
    def __init__(self, examples):
        from data import synthetic
        self.rows = [(e.question, e.answer) for e in examples]
        self.solutions = [t for e in examples for t in e.traces]
        self.strategies, self.system = list(synthetic.STRATEGIES), synthetic.SYSTEM
        self.answer, self.classify = synthetic.extract_answer, synthetic.classify


def coverage_tag(metrics_path):
    """The tag matched to the most distinct (question, trace) pairs over training, read from an
    ssft.py metrics.jsonl: the paper's choice of the Pass@1 tag. None without assignments."""
    pairs = {}
    for line in Path(metrics_path).read_text().splitlines():
        for q, sigma in (json.loads(line)["assignment"] or {}).items():
            for j, tag in enumerate(sigma):
                pairs.setdefault(tag, set()).add((q, j))
    return max(pairs, key=lambda t: (len(pairs[t]), -t)) if pairs else None


# -------------------------------------------------------------------------------------------------
# Generation and the report


def generate_per_tag(model, tok, prompts, tags, temperature, top_p, max_new, seed, batch=256):
    """For every prompt and tag, one generation: out[q][i] = (text, n_tokens)."""
    stop = [special_id(tok, "<|im_end|>")]
    jobs = [(q, i) for q in range(len(prompts)) for i in range(len(tags))]
    out = [[None] * len(tags) for _ in prompts]
    g = torch.Generator(model.lm_head.weight.device).manual_seed(seed)
    for s in range(0, len(jobs), batch):
        chunk = jobs[s:s + batch]
        gen = model.generate([prompts[q] for q, _ in chunk], max_new, temperature, top_p, stop,
                             prefix=[tags[i] for _, i in chunk], generator=g)
        for (q, i), ids in zip(chunk, gen):
            body = ids[len(tags[i]):]
            out[q][i] = (tok.decode(body, skip_special_tokens=True), len(body))
    return out


def evaluate(model, tok, task, num_tags, samples=4, temperature=0.7, top_p=0.95, max_new=256, seed=0,
             shared=False, chosen_tag=None):
    """All metrics of the module docstring; `samples` groups of one sample per tag. shared: every
    slot gets the one tag <think> that a mixed-mode model was trained with. chosen_tag (1-based)
    adds pass@1_tag."""
    model.eval()
    prompts = [encode(tok, prompt_text(q, task.system)) for q, _ in task.rows]
    tags = [encode(tok, tag_text(None))] * num_tags if shared else forking_tags(tok, num_tags).ids
    groups = [generate_per_tag(model, tok, prompts, tags, temperature, top_p, max_new, seed + g)
              for g in range(samples)]
    greedy = generate_per_tag(model, tok, prompts, tags, 0.0, 1.0, max_new, seed)
    golds = [a for _, a in task.rows]
    ans = [[[task.answer(groups[g][q][i][0]) for i in range(num_tags)] for g in range(samples)]
           for q in range(len(golds))]  # ans[q][g][i]
    ok = np.array([[[a == gold for a in grp] for grp in qa] for qa, gold in zip(ans, golds)])  # (Q, G, N)
    lengths = np.array([[[groups[g][q][i][1] for i in range(num_tags)] for g in range(samples)]
                        for q in range(len(golds))])
    g_ans = [[task.answer(t) for t, _ in row] for row in greedy]  # g_ans[q][i]
    g_ok = np.array([[a == gold for a in row] for row, gold in zip(g_ans, golds)])  # (Q, N)
    n = samples * num_tags
    report = {
        "questions": len(golds), "num_tags": num_tags, "shared_tag": shared, "samples_per_tag": samples,
        "temperature": temperature, "top_p": top_p,
        "pass@1": float(ok[:, :, 0].mean()),
        "cons@N": float(np.mean([cons_native(qa, gold) for qa, gold in zip(ans, golds)])),
        "greedy_cons@N": float(np.mean([majority(row) == gold for row, gold in zip(g_ans, golds)])),
        "cons@k": {k: float(np.mean([cons_at_k(qa, gold, k) for qa, gold in zip(ans, golds)]))
                   for k in sorted({1, num_tags, n})},
        "pass@k": {k: float(np.mean([pass_at_k(n, int(c), k) for c in ok.reshape(len(golds), -1).sum(1)]))
                   for k in sorted({1, num_tags, n})},
        # Headroom for choosing the tag per question (GFPO): any tag's greedy answer right.
        "greedy_oracle": float(g_ok.any(1).mean()),
        "per_tag": [{"tag": i + 1, "accuracy": float(ok[:, :, i].mean()), "mean_length": float(lengths[:, :, i].mean()),
                     "greedy_accuracy": float(g_ok[:, i].mean())} for i in range(num_tags)],
    }
    if chosen_tag:
        report["pass@1_tag"] = {"tag": chosen_tag, "accuracy": report["per_tag"][chosen_tag - 1]["accuracy"]}
    if task.strategies:
        tags = [i for q in range(len(golds)) for g in range(samples) for i in range(num_tags)]
        strat = [task.classify(groups[g][q][i][0]) for q in range(len(golds)) for g in range(samples)
                 for i in range(num_tags)]
        g_tags = [i for q in range(len(golds)) for i in range(num_tags)]
        g_strat = [task.classify(greedy[q][i][0]) for q in range(len(golds)) for i in range(num_tags)]
        report.update({
            "strategies": task.strategies,
            "purity": purity(tags, strat),
            "purity_greedy": purity(g_tags, g_strat),
            "distinct": distinct([g_strat[q * num_tags:(q + 1) * num_tags] for q in range(len(golds))]),
            "distinct_sampled": distinct([strat[k:k + num_tags] for k in range(0, len(strat), num_tags)]),
            "table": strategy_table(tags, strat, num_tags, task.strategies),
            "table_greedy": strategy_table(g_tags, g_strat, num_tags, task.strategies),
        })
    return report


def format_report(r):
    first = f"pass@1 (<think1>) {r['pass@1']:.3f}   "
    if "pass@1_tag" in r:
        first += f"pass@1 (<think{r['pass@1_tag']['tag']}>, by coverage) {r['pass@1_tag']['accuracy']:.3f}   "
    first += f"cons@{r['num_tags']} {r['cons@N']:.3f}   " + "   ".join(
        f"pass@{k} {v:.3f}" for k, v in r["pass@k"].items() if int(k) > 1)
    lines = [first, f"greedy over the {r['num_tags']} tags: majority {r['greedy_cons@N']:.3f}, "
                    f"any tag right {r['greedy_oracle']:.3f}"]
    if "table" in r:
        names = r["strategies"] + ["none"]
        for title, key in (("sampled, T=%.1f" % r["temperature"], "table"), ("greedy", "table_greedy")):
            lines.append(f"\ntags x strategies ({title})\n" + f"{'tag':<10}" + "".join(f"{s:>10}" for s in names)
                         + f"{'accuracy':>10}")
            for i, row in enumerate(r[key]):
                acc = r["per_tag"][i]["accuracy" if key == "table" else "greedy_accuracy"]
                label = f"<think>#{i + 1}" if r["shared_tag"] else f"<think{i + 1}>"
                lines.append(f"{label:<10}" + "".join(f"{c:>10}" for c in row) + f"{acc:>10.2f}")
        lines.append(f"\npurity {r['purity']:.3f} (greedy {r['purity_greedy']:.3f})   distinct strategies per "
                     f"question: greedy {r['distinct']:.2f}, sampled {r['distinct_sampled']:.2f}")
    return "\n".join(lines)


def load(path):
    """A model and its tokenizer from a checkpoint directory, or from a run directory of ssft.py."""
    path = Path(path)
    if not (path / "config.json").exists() and (path / "checkpoint" / "config.json").exists():
        path = path / "checkpoint"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return Qwen2.from_pretrained(path, device, dtype), load_tokenizer(path)


def evaluate_run(model_dir, task, num_tags, shared=False, samples=4, out_file=None, max_new=None, **sampling):
    """Evaluate a checkpoint or an ssft.py run directory on `task`, print the report, write it as
    JSON (default: eval.json in the run directory) and, for a run with matplotlib installed, the
    plots. The Pass@1 tag by coverage comes from the run's metrics.jsonl when there is one."""
    model_dir = Path(model_dir)
    model, tok = load(model_dir)
    metrics = model_dir / "metrics.jsonl"
    chosen = coverage_tag(metrics) if metrics.exists() else None
    if max_new is None:  # synthetic: twice the longest solution; math: the paper's 32k
        max_new = 2 * max(len(encode(tok, t)) for t in task.solutions) if task.strategies else 32768
    report = evaluate(model, tok, task, num_tags, samples, max_new=max_new, shared=shared, chosen_tag=chosen,
                      **sampling)
    print(format_report(report))
    out_file = Path(out_file or model_dir / "eval.json")
    out_file.write_text(json.dumps(report, indent=2))
    print(f"wrote {out_file}")
    if metrics.exists():
        try:
            from plots import plot_run
            plot_run(model_dir, report)
        except ImportError as e:
            print(f"no plots ({e}); pip install matplotlib to get them")
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description="Evaluate a model with forking tags.")
    p.add_argument("--model", required=True, help="checkpoint directory, or an ssft.py run directory")
    p.add_argument("--data", default="synthetic", help="'synthetic' (held-out questions) or a JSONL benchmark")
    p.add_argument("--num-tags", type=int, default=6)
    p.add_argument("--samples", type=int, default=4, help="samples per tag")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new", type=int, help="default: twice the longest synthetic solution; 32768 for math")
    p.add_argument("--train-questions", type=int, default=2000, help="synthetic: the split of ssft.py")
    p.add_argument("--questions", type=int, default=100, help="synthetic: held-out questions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shared-tag", action="store_true", help="a mixed-mode model: prompt every slot with <think>")
    p.add_argument("--out", help="where to write the report (default: eval.json in the --model directory)")
    a = p.parse_args(argv)
    if a.data == "synthetic":
        from data.synthetic import split
        task = SyntheticTask(split(a.train_questions, a.questions)[1])
    else:
        try:
            task = MathTask(a.data)
        except (DataError, OSError) as e:
            sys.exit(f"error: {e}")
    evaluate_run(a.model, task, a.num_tags, a.shared_tag, a.samples, a.out, a.max_new,
                 temperature=a.temperature, top_p=a.top_p, seed=a.seed)


if __name__ == "__main__":
    main()
