"""
Evaluation of a model with forking tags, computed as the paper's official evaluation computes it
(metrics.py holds the metric functions and says which official one each equals).

Four runs per question, sampled at the paper's temperature 0.7 and top-p 0.95 unless told
otherwise, each sample seeded by (seed, run, question, tag, sample) so that no batch size or rank
count changes it:
- tags: S samples of every tag <think1>..<thinkN>, the array answers[q][i][s] that every tag
  metric derives from: cons@N, the paper's native Cons@N (one sample per tag, majority vote, mean
  over the S groups); cons@k, the benchmark's Cons@k variant (metrics.CONS32_VARIANT) at k = N,
  N*S and 32; pass@k_tags, pass@k over all N*S samples; per_tag accuracy and mean length in
  tokens ("reasoning effort"); pass@1_tag, the accuracy of the tag matched to most traces in
  training (the paper's choice, from metrics.jsonl).
- think1: n samples of <think1>: pass@1 and the pass@k curve (metrics.PASS_KS), as officially
  computed from a run of their own.
- self: the model's own choice of tag. tag_distribution: at the forking token, the mean over
  questions of P(tag i | question), the entropy of that mean, and the mass outside the N tags;
  pass@1_self: n samples whose forking token is drawn from the N tags at the sampling temperature.
- greedy: one greedy answer per tag: greedy_cons@N (their vote) and greedy_oracle (some tag right:
  what choosing the tag per question, GFPO's job, could reach).
For the synthetic task also the tags x strategies tables (sampled, greedy), purity (share of
generations whose strategy is their tag's most common one) and distinct strategies per question
across the N tags (greedy, and within one sampled group). A model trained with one shared tag
(--shared-tag) is prompted with <think> in every slot and has no self run.

    python eval.py --model out/ssft                                    # the demo's held-out questions
    python eval.py --model runs/ssft32b --data ../shared/data/aime24.jsonl    # the paper's protocol
    python eval.py --model out/ssft --temperatures 0.3,0.5,0.7,1.0     # accuracy against diversity
    python -m pytest -q test_eval.py
"""
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import metrics
from batches import logits_in_order
from data import DataError, encode, forking_tags, load_prompts, prompt_text, synthetic, tag_text
from data.chat import SYSTEM
from data.tokenizer import load_tokenizer, special_id
from distributed import World, compute_dtype
from model import Qwen2
from run import UserError, arg, model_dir, parse_flags, user_input

# -------------------------------------------------------------------------------------------------
# Tasks: what evaluate needs of a benchmark


class SyntheticTask:
    """The held-out questions of the demo task; answers are digit strings, strategies known."""
    name = "synthetic"

    def __init__(self, examples):
        self.system, self.strategies = synthetic.SYSTEM, tuple(synthetic.STRATEGIES)
        self.questions, self.golds = [ex.question for ex in examples], [ex.answer for ex in examples]
        self.max_new = 2 * max(len(t) for ex in examples for t in ex.traces)  # characters bound tokens
        self.extract, self.classify = synthetic.extract_answer, synthetic.classify

    def right(self, answer, q):
        return answer == self.golds[q]

    def gold(self, q):
        return self.golds[q]


# The math prompt of the authors' evaluation (LightEval's AIME/MATH-500 tasks).
MATH_PROMPT = ("Solve the following math problem efficiently and clearly.  The last line of your response "
               "should be of the following format: 'Therefore, the final answer is: $\\boxed{{ANSWER}}$. "
               "I hope it is correct' (without quotes) where ANSWER is just the final number or expression "
               "that solves the problem. Think step by step before answering.\n\n{question}")


class MathTask:
    """A JSONL benchmark of questions (field `question` or `problem`) and `answer`s, graded by
    rewards.py as the official evaluation grades (math-verify extraction and comparison)."""
    strategies, max_new, system = (), 32768, SYSTEM

    def __init__(self, path):
        from data.traces import read_jsonl
        import rewards
        self.rewards, self.name = rewards, metrics.benchmark_of(path) or Path(path).stem
        self.questions, self.golds = [], []
        for n, obj in read_jsonl(path):
            q = obj.get("question", obj.get("problem")) if isinstance(obj, dict) else None
            if not isinstance(q, str) or not q.strip():
                raise DataError(path, n, "question", "needs a non-empty string 'question' (or 'problem')")
            if not isinstance(obj.get("answer"), (str, int, float)) or isinstance(obj["answer"], bool):
                raise DataError(path, n, "answer", "missing, or not a string or a number")
            self.questions.append(MATH_PROMPT.format(question=q))
            self.golds.append(rewards.parse_gold(str(obj["answer"])))
        if not self.questions:
            raise DataError(path, None, None, "no questions (the file is empty)")

    def extract(self, text):
        return self.rewards.extract_math(text)  # None when nothing parses

    def right(self, answer, q):
        return answer is not None and self.rewards.math_equal(self.golds[q], answer)

    def gold(self, q):
        return self.golds[q]


class CodeTask:
    """A code benchmark in the RL prompt format (data/prompts.py: question, tests, func_name), a
    sample right when its last fenced code block passes every test in the sandbox (rewards.py), as
    LiveCodeBench scores pass@1."""
    strategies, max_new, system, name = (), 32768, SYSTEM, "code"

    def __init__(self, prompts):
        import rewards
        self.rewards = rewards
        self.questions = [p.question for p in prompts]
        self.tests = [(p.tests, p.func_name) for p in prompts]

    def extract(self, text):
        return self.rewards.extract_code(text) or None

    def right(self, answer, q):
        return answer is not None and self.rewards.grade_code(answer, *self.tests[q]).passed

    def gold(self, q):  # programs are not voted against a reference
        return None


def load_task(path):
    """The benchmark of a JSONL file: code prompts (with `tests`) or math questions (with `answer`)."""
    from data.traces import read_jsonl
    first = next(read_jsonl(path), (None, {}))[1]
    return CodeTask(load_prompts(path)) if isinstance(first, dict) and "tests" in first else MathTask(path)


# -------------------------------------------------------------------------------------------------
# Sampling


def seeded(*key):
    """A CPU generator seeded by a tuple (seed, run, question, tag, sample)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def sample_all(model, jobs, *, temperature, top_p, max_new, stop, batch=256):
    """jobs: (prompt ids, forced prefix ids, seed key). Returns the generated ids after each prefix."""
    out = []
    for s in range(0, len(jobs), batch):
        chunk = jobs[s:s + batch]
        gen = model.generate([p for p, _, _ in chunk], max_new, temperature, top_p, stop,
                             prefix=[f for _, f, _ in chunk], generators=[seeded(*k) for _, _, k in chunk])
        out += [ids[len(f):] for (_, f, _), ids in zip(chunk, gen)]
    return out


@torch.no_grad()
def fork_logits(model, prompts, tags, pad_id, budget=8192):
    """Logits (Q, V) of the forking token after each prompt and the tag text before the fork."""
    world = World(device=next(model.parameters()).device)
    return logits_in_order(model, [p + tags.prefix for p in prompts], budget, world, pad_id)


def tag_distribution(logits, tags):
    """From fork logits (Q, V): mean P(tag i | question), the entropy (nats) of that mean, and the
    mean probability mass outside the N tag tokens."""
    p = torch.softmax(logits, -1)[:, tags.fork_ids]  # (Q, N)
    mean = p.mean(0)
    within = mean / mean.sum()
    return {"mean": mean.tolist(), "entropy": float(-(within * within.clamp_min(1e-30).log()).sum()),
            "outside": float(1 - p.sum(1).mean())}


def draw_tags(logits, tags, n, temperature, seed):
    """drawn[q][s]: the tag of self-run sample s of question q, drawn from the N tag tokens' logits
    at `temperature` (seeded per question and sample)."""
    probs = torch.softmax(logits[:, tags.fork_ids] / max(temperature, 1e-6), -1)  # (Q, N)
    return [[int(torch.multinomial(probs[q], 1, generator=seeded(seed, 4, q, 0, s))) for s in range(n)]
            for q in range(len(probs))]


# -------------------------------------------------------------------------------------------------
# The report


def evaluate(model, tok, task, *, num_tags, samples, pass_samples, temperature=0.7, top_p=0.95, max_new=None,
             seed=0, shared=False, coverage=None, greedy=True):
    """Every metric of the module docstring, as a JSON-able dict."""
    model.eval()
    Q, N, S, n = len(task.questions), num_tags, samples, pass_samples
    pad_id, stop = special_id(tok, "<|endoftext|>"), [special_id(tok, "<|im_end|>")]
    prompts = [encode(tok, prompt_text(q, task.system)) for q in task.questions]
    tags = None if shared else forking_tags(tok, N)
    tag_ids = [encode(tok, tag_text(None))] * N if shared else tags.ids
    max_new = max_new or task.max_new
    run = dict(temperature=temperature, top_p=top_p, max_new=max_new, stop=stop)

    def decode(ids):
        return tok.decode(ids, skip_special_tokens=True)

    # tags run: answers[q][i][s]
    gen = sample_all(model, [(prompts[q], tag_ids[i], (seed, 0, q, i, s)) for q in range(Q) for i in range(N)
                             for s in range(S)], **run)
    texts = [[[decode(gen[(q * N + i) * S + s]) for s in range(S)] for i in range(N)] for q in range(Q)]
    lengths = np.array([[[len(gen[(q * N + i) * S + s]) for s in range(S)] for i in range(N)] for q in range(Q)])
    answers = [[[task.extract(t) for t in tag] for tag in qt] for qt in texts]
    ok = np.array([[[task.right(a, q) for a in tag] for tag in answers[q]] for q in range(Q)])  # (Q, N, S)
    cons_fn = metrics.CONS32_FN[metrics.CONS32_VARIANT.get(task.name, "maj_sot")]
    ks = sorted({k for k in (N, N * S, 32) if k <= N * S})
    report = {
        "questions": Q, "num_tags": N, "shared_tag": shared, "samples_per_tag": S, "pass_samples": n,
        "temperature": temperature, "top_p": top_p, "max_new": max_new,
        "cons@N": float(np.mean([metrics.native_cons(answers[q], lambda a, q=q: task.right(a, q)) for q in range(Q)])),
        "cons@k_variant": metrics.CONS32_VARIANT.get(task.name, "maj_sot"),
        "cons@k": {k: float(np.mean([cons_fn(answers[q], task.gold(q), k) for q in range(Q)])) for k in ks},
        # pass@k over the N*S samples of all tags: the diversity that forking adds (k = N: one per tag)
        "pass@k_tags": {k: float(np.mean([metrics.pass_at_k(N * S, int(c), k) for c in ok.reshape(Q, -1).sum(1)]))
                        for k in (1, N)},
        "per_tag": [{"tag": f"<think{i + 1}>", "accuracy": float(ok[:, i].mean()),
                     "mean_length": float(lengths[:, i].mean())} for i in range(N)],
    }
    if coverage is not None:
        report["pass@1_tag"] = {"tag": f"<think{coverage + 1}>", "accuracy": report["per_tag"][coverage]["accuracy"]}
    # think1 run: pass@1 and the pass@k curve
    gen1 = sample_all(model, [(prompts[q], tag_ids[0], (seed, 1, q, 0, s)) for q in range(Q) for s in range(n)], **run)
    c = [sum(task.right(task.extract(decode(gen1[q * n + s])), q) for s in range(n)) for q in range(Q)]
    report["pass@k"] = {k: float(np.mean([metrics.pass_at_k(n, cq, k) for cq in c]))
                        for k in sorted({1, *[k for k in metrics.PASS_KS.get(task.name, (N, n)) if k <= n]})}
    report["pass@1"] = report["pass@k"][1]
    # self run: the model's own tag
    if not shared:
        logits = fork_logits(model, prompts, tags, pad_id)
        report["tag_distribution"] = tag_distribution(logits, tags)
        drawn = draw_tags(logits, tags, n, temperature, seed)
        gen2 = sample_all(model, [(prompts[q], tags.ids[drawn[q][s]], (seed, 2, q, drawn[q][s], s))
                                  for q in range(Q) for s in range(n)], **run)
        right = [task.right(task.extract(decode(gen2[q * n + s])), q) for q in range(Q) for s in range(n)]
        report["pass@1_self"] = float(np.mean(right))
    # greedy: one answer per tag
    if greedy:
        gen3 = sample_all(model, [(prompts[q], tag_ids[i], (seed, 3, q, i, 0)) for q in range(Q) for i in range(N)],
                          **{**run, "temperature": 0.0})
        g_texts = [[decode(gen3[q * N + i]) for i in range(N)] for q in range(Q)]
        g_ans = [[task.extract(t) for t in row] for row in g_texts]
        g_ok = np.array([[task.right(a, q) for a in g_ans[q]] for q in range(Q)])  # (Q, N)
        report["greedy_cons@N"] = float(np.mean([task.right(metrics.vote(g_ans[q]), q) for q in range(Q)]))
        report["greedy_oracle"] = float(g_ok.any(1).mean())
        for i in range(N):
            report["per_tag"][i]["greedy_accuracy"] = float(g_ok[:, i].mean())
    if task.strategies:
        names = list(task.strategies)
        strat = [[[task.classify(t) for t in tag] for tag in qt] for qt in texts]  # (Q, N, S)
        flat_tags = [i for q in range(Q) for i in range(N) for _ in range(S)]
        flat = [x for q in strat for tag in q for x in tag]
        report.update({"strategies": names, "purity": metrics.purity(flat_tags, flat),
                       "distinct_sampled": metrics.distinct([[strat[q][i][s] for i in range(N)]
                                                             for q in range(Q) for s in range(S)]),
                       "table": metrics.strategy_table(flat_tags, flat, N, names)})
        if greedy:
            g_strat = [[task.classify(t) for t in row] for row in g_texts]
            g_tags = [i for _ in range(Q) for i in range(N)]
            report.update({"purity_greedy": metrics.purity(g_tags, [x for row in g_strat for x in row]),
                           "distinct": metrics.distinct(g_strat),
                           "table_greedy": metrics.strategy_table(g_tags, [x for row in g_strat for x in row], N,
                                                                  names)})
    return report


def format_report(r):
    N = r["num_tags"]
    first = f"pass@1 (<think1>) {r['pass@1']:.3f}   "
    if "pass@1_tag" in r:
        first += f"pass@1 ({r['pass@1_tag']['tag']}, by coverage) {r['pass@1_tag']['accuracy']:.3f}   "
    if "pass@1_self" in r:
        first += f"pass@1 (own tag) {r['pass@1_self']:.3f}   "
    first += f"cons@{N} {r['cons@N']:.3f}   " + "   ".join(
        f"pass@{k} {v:.3f}" for k, v in r["pass@k"].items() if int(k) > 1)
    lines = [first]
    if "greedy_oracle" in r:
        lines.append(f"greedy over the {N} tags: majority {r['greedy_cons@N']:.3f}, "
                     f"any tag right {r['greedy_oracle']:.3f}")
    if "tag_distribution" in r:
        d = r["tag_distribution"]
        lines.append("P(tag | question), mean: " + " ".join(f"{p:.2f}" for p in d["mean"])
                     + f"   entropy {d['entropy']:.2f} nats, outside the tags {d['outside']:.3f}")
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
    for line in Path(metrics_path).read_text().splitlines():
        try:
            assignment = json.loads(line).get("assignment") or {}
        except ValueError:
            continue  # a line cut short by a crash
        for qid, sigma in assignment.items():
            for j, tag in enumerate(sigma):
                pairs.setdefault(tag, set()).add((qid, j))
    return max(pairs, key=lambda t: (len(pairs[t]), -t)) if pairs else None


def load(path):
    """A model (in the compute dtype) and its tokenizer from a HF model directory or a run directory."""
    path = model_dir(path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return Qwen2.from_pretrained(path, device, compute_dtype(device)), load_tokenizer(path)


def evaluate_run(model_path, task, num_tags, *, shared=False, out_file=None, temperatures=None, **kwargs):
    """Evaluate a checkpoint or a run directory, print the report, write it as JSON (default:
    eval.json beside the model) and, for a run with matplotlib installed, the plots."""
    with user_input():
        model, tok = load(model_path)
    run_dir = Path(model_path)
    metrics_file = run_dir / "metrics.jsonl"
    coverage = coverage_tag(metrics_file) if metrics_file.exists() and not shared else None
    if temperatures:
        report = {str(t): evaluate(model, tok, task, num_tags=num_tags, shared=shared, coverage=coverage,
                                   greedy=False, **{**kwargs, "temperature": t}) for t in temperatures}
        for t, r in report.items():
            print(f"T={t}: pass@1 {r['pass@1']:.3f}  cons@{num_tags} {r['cons@N']:.3f}  "
                  + "  ".join(f"pass@{k} {v:.3f}" for k, v in r["pass@k"].items() if int(k) > 1))
    else:
        report = evaluate(model, tok, task, num_tags=num_tags, shared=shared, coverage=coverage, **kwargs)
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
    data: str = arg("synthetic", "'synthetic' (the held-out questions of ssft.py) or a JSONL benchmark", kind="data")
    num_tags: int = arg(6, "N: tags <think1>..<thinkN> (with --shared-tag: slots of <think>)", low=2)
    samples: int = arg(0, "S: samples per tag in the tags run (0: the official count, or 4 on the synthetic task)",
                       low=0)
    pass_samples: int = arg(0, "n: samples of <think1> and of the model's own tag (0: 32, or 8 on the synthetic task)",
                            low=0)
    temperature: float = arg(0.7, "sampling temperature", low=0)
    top_p: float = arg(0.95, "nucleus sampling", above=0, high=1)
    temperatures: str = arg("", "comma-separated temperatures: evaluate at each (eval_temperatures.json)")
    max_new: int = arg(0, "new tokens per sample (0: twice the longest synthetic solution; 32768 for math)", low=0)
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
        task = SyntheticTask(synthetic.split(cfg.train_questions, cfg.questions)[1]) if cfg.data == "synthetic" \
            else load_task(cfg.data)
        default_samples = (4, 8) if task.name == "synthetic" else \
            (metrics.SAMPLES_PER_TAG.get(task.name, 4), metrics.PASS_N)
        evaluate_run(cfg.model, task, cfg.num_tags, shared=cfg.shared_tag, out_file=cfg.out or None,
                     temperatures=temperatures, samples=cfg.samples or default_samples[0],
                     pass_samples=cfg.pass_samples or default_samples[1], temperature=cfg.temperature,
                     top_p=cfg.top_p, max_new=cfg.max_new or None, seed=cfg.seed)
    except (UserError, DataError) as e:  # the user's input: one line, no traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
