"""
eval.py: every report entry derived from the runs' samples in the right layout (a scripted model
whose answers are known), the coverage tag, bad input before anything is loaded, and the default
`python ssft.py` path end to end.

    python -m pytest -q test_eval.py
"""
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import eval as ev
import ssft
from conftest import ROOT
from data import encode, forking_tags, prompt_text
from data.synthetic import make_examples, tokenizer_for
from metrics import pass_at_k
from sampling import _nest, seeded
from tasks import SyntheticTask, load_task


@pytest.fixture(scope="module")
def tok():
    return tokenizer_for(make_examples(200, seed=0))


class Scripted(torch.nn.Module):
    """A stand-in model whose generation is a known function of (question, tag, sample): question q
    under tag i answers right unless (q + i + s) % 3 == 0, with strategy STRATEGIES[i % 4]."""

    def __init__(self, tok, task, num_tags):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.task = tok, task
        self.tags = forking_tags(tok, num_tags).ids
        self.prompts = [encode(tok, prompt_text(q, task.system)) for q in task.questions]

    def generate(self, prompts, max_new, temperature, top_p, stop, forced, generators):
        out = []
        for p, f, g in zip(prompts, forced, generators):
            q, i = self.prompts.index(list(p)), self.tags.index(list(f))
            s = int(torch.randint(0, 1000, (), generator=g)) if temperature else 0  # a per-sample draw
            answer = self.task.golds[q] if (q + i + s) % 3 else "0"
            text = f"{self.task.strategies[i % 4]} steps answer {answer}"
            out.append(list(f) + encode(self.tok, text) + stop)
        return out

    def forward(self, ids, last=False, **kwargs):  # uniform fork logits over the whole vocabulary
        return torch.zeros(ids.shape[0], self.tok.get_vocab_size())


def test_report_derives_from_the_samples_in_order(tok):
    examples = make_examples(5, seed=7)
    task = SyntheticTask(examples)
    N, S, n = 6, 3, 4
    model = Scripted(tok, task, N)
    r = ev.evaluate(model, tok, task, num_tags=N, samples=S, pass_samples=n, seed=1)

    def draw(run, q, i, s):  # the same per-sample draw the scripted model makes
        return int(torch.randint(0, 1000, (), generator=seeded(1, run, q, i, s)))

    right = np.array([[[(q + i + draw(ev.TAGS, q, i, s)) % 3 != 0 for s in range(S)] for i in range(N)]
                      for q in range(5)])
    for i in range(N):
        assert r["per_tag"][i]["accuracy"] == pytest.approx(right[:, i].mean())
    # native Cons@N: per sample index s, the vote of the N tags' answers (a wrong answer is "0")
    votes = []
    for q in range(5):
        for s in range(S):
            answers = [task.golds[q] if right[q, i, s] else "0" for i in range(N)]
            votes.append(max(answers, key=answers.count) == task.golds[q])
    assert r["cons@N"] == pytest.approx(np.mean(votes))
    c = [sum((q + draw(ev.THINK1, q, 0, s)) % 3 != 0 for s in range(n)) for q in range(5)]
    assert r["pass@1"] == pytest.approx(np.mean(c) / n)
    assert r["pass@k"][4] == pytest.approx(np.mean([pass_at_k(n, cq, 4) for cq in c]))
    greedy = np.array([[(q + i) % 3 != 0 for i in range(N)] for q in range(5)])
    assert r["greedy_oracle"] == pytest.approx(greedy.any(1).mean())
    # strategies follow the tag: every table row is one strategy, purity 1, 4 strategies over 6 tags
    assert r["purity"] == 1.0 and r["distinct"] == 4.0
    assert [row.index(max(row)) for row in r["table"]] == [0, 1, 2, 3, 0, 1]
    assert sum(map(sum, r["table"])) == 5 * N * S
    # uniform logits: the tags equally likely among themselves (entropy log N), the rest outside
    d = r["tag_distribution"]
    assert d["entropy_of_mean"] == pytest.approx(np.log(N)) and d["mean_entropy"] == pytest.approx(np.log(N))
    assert d["outside"] == pytest.approx(1 - N / tok.get_vocab_size())


def test_coverage_tag_counts_distinct_pairs(tmp_path):
    lines = [{"step": 1, "assignment": {"a": [0, 2], "b": [2, 1]}}, {"step": 2, "assignment": {"a": [0, 2]}},
             {"step": 3, "assignment": {"b": [1, 2]}}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines) + '{"step": 4, "assi')
    # tag 2: (a,1) (b,0) (b,1) -> 3 pairs; tag 0: 1; tag 1: (b,1) (b,0) -> 2
    assert ev.coverage_tag(tmp_path / "metrics.jsonl") == 2


def run_eval(args):
    return subprocess.run([sys.executable, "eval.py", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("args,message", [
    (["--samples", "-1"], "error: --samples -1: must be at least 0"),
    (["--num-tags", "1"], "error: --num-tags 1: must be at least 2"),
    (["--top-p", "0"], "error: --top-p 0.0: must be more than 0"),
    (["--pass-samples", "x"], "error: argument --pass-samples: invalid int value: 'x'"),
    (["--data", "nowhere.jsonl"], "error: --data nowhere.jsonl: must be 'synthetic', 'synthetic-short' or an existing file"),
    (["--model", "tiny"], "error: --model tiny: is not a model directory"),
])
def test_bad_flags_give_one_line(args, message, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    proc = run_eval(["--model", str(tmp_path), *args])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith(message)


def test_bad_benchmark_files_fail_before_the_model_loads(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # loading it would fail: it must not be reached
    for content, message in [("", "no prompts (the file is empty)"),
                             ('{"problem": "1+1?"}\n', "field 'answer': missing"),
                             ('{"answer": "2"}\n', "field 'question'")]:
        (tmp_path / "bench.jsonl").write_text(content)
        proc = run_eval(["--model", str(tmp_path / "model"), "--data", str(tmp_path / "bench.jsonl")])
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert message in proc.stderr and "config.json" not in proc.stderr


def test_default_path_end_to_end(tmp_path):
    """`python ssft.py` in miniature: train, checkpoint, export, evaluate, write eval.json."""
    ssft.main(["--steps", "12", "--train-questions", "64", "--eval-questions", "6", "--batch", "8",
               "--out", str(tmp_path), "--model", "tiny"])
    report = json.loads((tmp_path / "eval.json").read_text())
    for key in ("pass@1", "cons@N", "cons@k", "pass@k", "purity", "distinct", "per_tag", "table", "table_greedy",
                "pass@1_self", "tag_distribution", "greedy_oracle"):
        assert key in report
    assert len(report["per_tag"]) == 6 and report["questions"] == 6
    assert sum(map(sum, report["table"])) == 6 * 6 * report["samples_per_tag"]
    assert 0.0 <= report["purity"] <= 1.0 and 0.0 <= report["distinct"] <= 4.0
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 12

    # --temperatures: one report per temperature, the default one equal to eval.json's (same seeds)
    ev.main(["--model", str(tmp_path), "--train-questions", "64", "--questions", "6",
               "--temperatures", "0.7,1.5", "--out", str(tmp_path / "t.json")])
    by_t = json.loads((tmp_path / "t.json").read_text())
    assert set(by_t) == {"0.7", "1.5"}
    for key in ("pass@1", "cons@N", "pass@k", "pass@k_tags"):
        assert by_t["0.7"][key] == report[key]
    lengths = {t: [tag["mean_length"] for tag in by_t[t]["per_tag"]] for t in by_t}
    assert lengths["0.7"] == [tag["mean_length"] for tag in report["per_tag"]] != lengths["1.5"]


def scripted_run(monkeypatch, task, N, text, best, **kwargs):
    """evaluate() on `task` where sample s of question q under tag i in run r is text(r, q, i, s)
    (ids: its UTF-8 bytes) and the fork logits put all but e^-40 of the mass on tag best[q]."""
    Q = len(task.questions)
    tags = SimpleNamespace(fork_ids=list(range(N)))  # token i is tag i; token N is outside the tags
    monkeypatch.setattr(ev, "chat_prompts", lambda tok, task, N, shared: SimpleNamespace(
        ids=[[q] for q in range(Q)], slots=[[i] for i in range(N)], tags=tags, stop=[]))

    def sample(model, shape, job, **settings):
        flat = []
        for ix in np.ndindex(*shape):
            prompt, slot, (_, run, q, i, s) = job(*ix)
            assert prompt == [q] and slot == [i]  # the job asks for the tag its seed names
            flat.append(list(text(run, q, i, s).encode()))
        return _nest(flat, shape)

    monkeypatch.setattr(ev, "sample", sample)
    monkeypatch.setattr(ev, "fork_logits", lambda model, prompts, qs, budget, world: torch.stack(
        [torch.tensor([20.0 if j == best[q] else -20.0 for j in range(N + 1)]) for q in qs]))
    tok = SimpleNamespace(decode=lambda ids, skip_special_tokens: bytes(ids).decode())
    return ev.evaluate(torch.nn.Linear(1, 1), tok, task, num_tags=N, **kwargs)


def check_fork_statistics(d):
    """best = [0, 1]: each question's own tag is certain, the mean is half and half."""
    assert d["mean"] == pytest.approx([0.5, 0.5]) and d["entropy_of_mean"] == pytest.approx(np.log(2))
    assert d["mean_entropy"] == pytest.approx(0, abs=1e-12) and d["outside"] == pytest.approx(0, abs=1e-12)


def test_code_task_end_to_end_reports_what_livecodebench_does(tmp_path, monkeypatch):
    """Code: no votes (no cons@ keys); every other key equals its value worked out by hand; each
    distinct program of a question runs once in the sandbox."""
    tests = lambda a, b: [{"input": f"{a} {b}\n", "output": f"{a + b}\n", "testtype": "stdin"}]  # noqa: E731
    (tmp_path / "code.jsonl").write_text("".join(json.dumps({"question": f"Add {a} and {b}", "tests": tests(a, b)})
                                                 + "\n" for a, b in ((2, 3), (4, 4))))
    task = load_task(str(tmp_path / "code.jsonl"))
    good, bad, prose = "```python\nprint(sum(map(int, input().split())))\n```", "```python\nprint(0)\n```", "Hm."
    tags_run = [[[good, good], [bad, prose]], [[good, bad], [good, good]]]  # [q][i][s]
    greedy = [[good, bad], [bad, bad]]  # [q][i]
    runs = []
    grade_code = task.rewards.grade_code
    monkeypatch.setattr(task.rewards, "grade_code",
                        lambda source, *a, **k: runs.append(source) or grade_code(source, *a, **k))

    def text(run, q, i, s):
        if run == ev.TAGS:
            return tags_run[q][i][s]
        if run == ev.THINK1:
            return [[good, bad], [bad, prose]][q][s]
        if run == ev.SELF:  # right exactly when the fork went to the question's best tag
            return good if i == [1, 0][q] else bad
        return greedy[q][i]

    r = scripted_run(monkeypatch, task, 2, text, best=[1, 0], samples=2, pass_samples=2)
    assert set(r) == {"questions", "num_tags", "shared_tag", "samples_per_tag", "pass_samples", "temperature",
                      "top_p", "max_new", "pass@k_tags", "per_tag", "pass@k", "pass@1", "tag_distribution",
                      "pass@1_self", "greedy_oracle"}  # no cons@N, cons@k, greedy_cons@N: LCB has no votes
    assert (r["questions"], r["num_tags"], r["shared_tag"], r["samples_per_tag"], r["pass_samples"]) == (2, 2, 0, 2, 2)
    assert (r["temperature"], r["top_p"], r["max_new"]) == (0.7, 0.95, 32768)
    assert [t["accuracy"] for t in r["per_tag"]] == [0.75, 0.5]
    assert [t["greedy_accuracy"] for t in r["per_tag"]] == [0.5, 0.0]
    assert [t["mean_length"] for t in r["per_tag"]] == [np.mean([len(good), len(good), len(good), len(bad)]),
                                                        np.mean([len(bad), len(prose), len(good), len(good)])]
    assert r["pass@k_tags"] == {1: pytest.approx((2 / 4 + 3 / 4) / 2), 2: pytest.approx((1 - 1 / 6 + 1) / 2)}
    assert r["pass@1"] == 0.25 and r["pass@k"] == {1: 0.25, 2: 0.5}  # q0: one of two right, q1: none
    assert r["pass@1_self"] == 1.0 and r["greedy_oracle"] == 0.5
    check_fork_statistics(r["tag_distribution"])
    programs = [task.extract(good, 0), task.extract(bad, 0)]
    assert sorted(runs) == sorted(programs * 2)  # per question: the good and the bad program, once each


def test_gpqa_task_end_to_end_votes_on_texts(tmp_path, monkeypatch):
    """GPQA: votes on whole texts (ties to the first), the winner graded by its letter; every key
    equals its value worked out by hand."""
    (tmp_path / "gpqa_diamond.jsonl").write_text("".join(json.dumps(
        {"question": f"Q{q}?", "choices": ["w", "x", "y", "z"], "answer": gold}) + "\n" for q, gold in enumerate("BD")))

    task = load_task(str(tmp_path / "gpqa_diamond.jsonl"))
    A = {x: f"Answer: {x}" for x in "ABCD"}
    tags_run = [[[A["B"], A["B"], A["A"]], [A["A"], A["B"], A["C"]]],  # q0 (gold B): tag 0, tag 1
                [[A["D"], "no letter", A["C"]], [A["C"], A["C"], A["D"]]]]  # q1 (gold D)

    def text(run, q, i, s):
        if run == ev.TAGS:
            return tags_run[q][i][s]
        if run == ev.THINK1:
            return [[A["B"], A["A"]], [A["D"], A["D"]]][q][s]
        if run == ev.SELF:
            return A["BD"[q]] if i == [0, 1][q] else A["A"]
        return [[A["B"], A["A"]], [A["C"], A["C"]]][q][i]

    r = scripted_run(monkeypatch, task, 2, text, best=[0, 1], samples=3, pass_samples=2, max_new=100)
    assert set(r) == {"questions", "num_tags", "shared_tag", "samples_per_tag", "pass_samples", "temperature",
                      "top_p", "max_new", "pass@k_tags", "per_tag", "pass@k", "pass@1", "tag_distribution",
                      "pass@1_self", "greedy_oracle", "cons@N", "cons@k_variant", "cons@k", "greedy_cons@N"}
    assert (r["questions"], r["samples_per_tag"], r["pass_samples"], r["max_new"]) == (2, 3, 2, 100)
    assert [t["accuracy"] for t in r["per_tag"]] == [0.5, pytest.approx(2 / 6)]
    assert [t["greedy_accuracy"] for t in r["per_tag"]] == [0.5, 0.0]
    assert r["pass@k_tags"] == {1: pytest.approx(5 / 12), 2: pytest.approx((0.8 + 0.6) / 2)}
    # native Cons@2, per sample index: q0 B (a tie, the first), B, A; q1 D (tie), "no letter" (tie), C
    assert r["cons@N"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    # maj@k in tag-block order (GPQA's official variant): k=2 q0 B, q1 D (tie); k=6 q0 B (3 of 6), q1 C
    assert r["cons@k_variant"] == "maj_blocks" and r["cons@k"] == {2: 1.0, 6: 0.5}
    assert r["pass@1"] == 0.75 and r["pass@k"] == {1: 0.75}  # GPQA's official Pass@k: k = 1 only
    assert r["pass@1_self"] == 1.0 and r["greedy_oracle"] == 0.5 and r["greedy_cons@N"] == 0.5
    check_fork_statistics(r["tag_distribution"])
