"""
eval.py: every report entry derived from the runs' samples in the right layout (a scripted model
whose answers are known), the coverage tag, bad input before anything is loaded, and the default
`python ssft.py` path end to end.

    python -m pytest -q test_eval.py
"""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import eval as ev
import ssft
from conftest import ROOT
from data import encode, forking_tags, prompt_text
from data.synthetic import make_examples, tokenizer_for
from metrics import pass_at_k
from sampling import seeded
from tasks import SyntheticTask


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
    (["--data", "nowhere.jsonl"], "error: --data nowhere.jsonl: must be 'synthetic' or an existing file"),
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
