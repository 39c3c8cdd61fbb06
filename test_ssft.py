"""
ssft.py: the cost grid against its definition, the matching against brute force, the set loss and
its gradients, the baselines, FSDP2 over two gloo ranks against one process, exact resume, and one
test per kind of bad input.

    python -m pytest -q test_ssft.py
"""
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import ssft
from batches import micro_batches
from conftest import CPU_ENV, ROOT, TINY_RUN, TORCHRUN, read_metrics
from data import encode_example, forking_tags, sequence
from data.synthetic import SYSTEM, make_examples, tokenizer_for
from distributed import World
from flags import UserError, parse_flags
from model import Config, Qwen2


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    examples = make_examples(6, seed=3)
    tok = tokenizer_for(make_examples(200, seed=0))
    model = Qwen2(Config(**{**Config.preset("tiny").__dict__, "vocab_size": tok.get_vocab_size()}))
    return model, [encode_example(tok, e, SYSTEM) for e in examples], forking_tags(tok, 6), tok


def grid(model, encs, tags, L=16, budget=4096):
    return ssft.cost_grid(model, questions=encs, tags=tags, L=L, budget=budget, world=World(), pad_id=0)


def train(args):
    return ssft.train(*parse_flags(ssft.SSFTConfig, args))


def test_grid_is_the_mean_nll_of_each_pair(setup):
    model, encs, tags, _ = setup
    (cost,) = grid(model, encs[:1], tags, L=5)
    for i, j in [(0, 0), (3, 2), (5, 3)]:
        ids, targets = sequence(encs[0].prompt, tags.ids[i], encs[0].traces[j][:5], tag_loss=False)
        logp = torch.log_softmax(model(torch.tensor([ids]))[0], -1)
        picked = [logp[t, y] for t, y in enumerate(targets) if y != -100]
        assert len(picked) == 5
        assert cost[i, j] == pytest.approx(-torch.stack(picked).mean().item(), rel=1e-5)


def test_assignment_is_the_min_cost_matching_and_injective(setup):
    model, encs, tags, _ = setup
    for cost in grid(model, encs, tags):
        sigma = ssft.assign(cost, mode="ssft", rng=None)
        brute = min(itertools.permutations(range(6), 4), key=lambda p: cost[list(p), range(4)].sum())
        assert len(set(sigma)) == 4
        assert cost[sigma, range(4)].sum() == pytest.approx(cost[list(brute), range(4)].sum(), abs=1e-12)


def test_set_loss_is_invariant_to_permuting_the_traces(setup):
    """The traces of a question are a set: listing them in another order moves the grid's columns
    and the assignment with them, and leaves ssft.set_loss (value and gradients) as it was."""
    model, encs, tags, _ = setup
    enc = encs[0]
    (cost,) = grid(model, [enc], tags)
    perm = [2, 0, 3, 1]
    shuffled = type(enc)(enc.prompt, [enc.traces[p] for p in perm])
    (cost_p,) = grid(model, [shuffled], tags)
    np.testing.assert_allclose(cost_p, cost[:, perm], rtol=1e-6)

    def set_loss(e, c):
        sigma = ssft.assign(c, mode="ssft", rng=None)
        rows = [sequence(e.prompt, tags.ids[sigma[j]], t) for j, t in enumerate(e.traces)]
        model.zero_grad()
        loss, tokens = ssft.set_loss(model, rows=rows, budget=120, world=World(), pad_id=0)
        return loss, tokens, {n: p.grad.clone() for n, p in model.named_parameters()}

    (a, tokens_a, grads_a), (b, tokens_b, grads_b) = set_loss(enc, cost), set_loss(shuffled, cost_p)
    assert tokens_a == tokens_b and b == pytest.approx(a, rel=1e-6)
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-5, atol=1e-8)
    # the check can fail: the same traces under another (non-matching) assignment change the loss
    sigma = ssft.assign(cost, mode="ssft", rng=None)
    other = [sequence(enc.prompt, tags.ids[(sigma[j] + 1) % 6], t) for j, t in enumerate(enc.traces)]
    assert ssft.set_loss(model, rows=other, budget=120, world=World(), pad_id=0)[0] != pytest.approx(a, rel=1e-6)
    model.zero_grad()


def test_gradients_come_only_from_the_matched_sequences(setup):
    model, encs, tags, _ = setup
    costs = grid(model, encs[:2], tags)
    rows = []
    for e, c in zip(encs[:2], costs):
        sigma = ssft.assign(c, mode="ssft", rng=None)
        rows += [sequence(e.prompt, tags.ids[sigma[j]], t) for j, t in enumerate(e.traces)]
    model.zero_grad()
    loss, tokens = ssft.set_loss(model, rows=rows, budget=120, world=World(), pad_id=0)  # several passes
    assert len(micro_batches([len(r[0]) for r in rows], 120)) > 1
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    # The same by hand: the summed NLL of exactly the M matched sequences per question / tokens.
    total = sum(model(torch.tensor([i]), targets=torch.tensor([t]))[0].sum() for i, t in rows)
    assert tokens == sum(sum(y != -100 for y in t) for _, t in rows)
    assert loss == pytest.approx(total.item() / tokens, rel=1e-6)
    (total / tokens).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-8)
    model.zero_grad()


def test_random_mode_draws_injective_maps():
    cost = np.zeros((6, 4))
    def draw(step):  # as the training loop seeds it: (seed, step, question)
        return tuple(ssft.assign(cost, mode="random", rng=np.random.default_rng([0, step, 7])))
    draws = {draw(step) for step in range(50)}
    assert all(len(set(d)) == 4 and set(d) <= set(range(6)) for d in draws)
    assert len(draws) > 40  # redrawn every step
    assert draw(3) == draw(3)


def test_mixed_mode_gives_every_trace_the_shared_tag(tmp_path):
    """mixed: one tag, <think>, for every trace; its 1 x M grid is logged like SSFT's."""
    train(TINY_RUN + ["--steps", "2", "--mode", "mixed", "--out", str(tmp_path)])
    for record in read_metrics(tmp_path):
        assert set(map(tuple, record["assignment"].values())) == {(0, 0, 0, 0)}
        assert record["match_cost"] > 0 and all(len(h) == 1 for h in record["tag_source"].values())


def losses(out):
    return read_metrics(out, "loss")


def test_resume_continues_exactly(tmp_path):
    args = TINY_RUN + ["--steps", "6", "--seed", "1"]
    train(args + ["--out", str(tmp_path / "full")])
    train(args + ["--out", str(tmp_path / "cut"), "--stop-after", "3"])
    assert len(losses(tmp_path / "cut")) == 3
    train(["--out", str(tmp_path / "cut"), "--resume"])
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "full"), abs=1e-9)
    assert not (tmp_path / "cut" / "checkpoint.tmp").exists()


def test_unfinished_run_is_not_overwritten(tmp_path):
    train(TINY_RUN + ["--steps", "4", "--stop-after", "1", "--out", str(tmp_path)])
    with pytest.raises(UserError, match="unfinished run .*--resume"):
        train(TINY_RUN + ["--steps", "4", "--out", str(tmp_path)])


def test_two_gloo_ranks_equal_one_process(tmp_path):
    args = TINY_RUN + ["--steps", "3", "--mode", "ssft", "--export-dtype", "float32"]
    for name, launcher in (("one", [sys.executable]), ("two", TORCHRUN)):
        proc = subprocess.run([*launcher, "ssft.py", *args, "--out", str(tmp_path / name)],
                              cwd=ROOT, env=CPU_ENV, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(losses(tmp_path / "two")) == 3
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-6)
    assert read_metrics(tmp_path / "one", "assignment") == read_metrics(tmp_path / "two", "assignment")

    from transformers import Qwen2ForCausalLM
    hf = Qwen2ForCausalLM.from_pretrained(tmp_path / "two" / "model").eval()
    ours = Qwen2.from_pretrained(tmp_path / "one" / "model")
    ids = torch.randint(0, ours.config.vocab_size, (2, 12))
    torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=1e-4, atol=1e-4)


def test_cpu_offload_trains_the_same_and_resumes_with_it(tmp_path):
    """Two gloo ranks with --cpu-offload (FSDP2's CPUOffloadPolicy; test_plan.py checks that every
    unit gets it) give the losses of the run without it, also stopped and resumed without repeating
    the flag (the saved run's setting holds)."""
    args = TINY_RUN + ["--steps", "3", "--seed", "2"]
    for flags in (["--out", str(tmp_path / "plain")], ["--out", str(tmp_path / "offload"), "--cpu-offload",
                                                       "--stop-after", "2"]):
        proc = subprocess.run([*TORCHRUN, "ssft.py", *args, *flags], cwd=ROOT, env=CPU_ENV, capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([*TORCHRUN, "ssft.py", "--out", str(tmp_path / "offload"), "--resume"], cwd=ROOT,
                          env=CPU_ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(losses(tmp_path / "offload")) == 3
    assert losses(tmp_path / "offload") == pytest.approx(losses(tmp_path / "plain"), abs=1e-6)


# -------------------------------------------------------------------------------------------------
# Bad input: one clear message naming file, line and field; nothing written to --out


GOOD = {"question": "sort 312", "traces": ["a", "b", "c", "d"]}
BAD = {  # kind: (second line of the file, what the message says after the file name)
    "invalid json": (b'{"question": "q", "traces": [', ":2: invalid JSON (Expecting value, column 30)"),
    "missing field": (json.dumps({"traces": ["a"] * 4}).encode(), ":2: field 'question': missing"),
    "mistyped field": (json.dumps({"question": "q", "traces": ["a", 3, "c", "d"]}).encode(),
                       ":2: field 'traces[1]': must be a string, got int"),
    "empty trace": (json.dumps({"question": "q", "traces": ["a", "", "c", "d"]}).encode(),
                    ":2: field 'traces[1]': is empty"),
    "fewer traces": (json.dumps({"question": "q", "traces": ["a", "b"]}).encode(),
                     ":2: field 'traces': has 2 traces, fewer than --traces 4 "
                     "(pass --allow-fewer to train on what is there)"),
    "tag in trace": (json.dumps({"question": "q", "traces": ["a", "b <think2>", "c", "d"]}).encode(),
                     ":2: field 'traces[1]': contains the reserved string '<think2>' at character 2"),
    "non-utf8": (b'{"question": "q\xff", "traces": ["a", "b", "c", "d"]}', ":2: not valid UTF-8 (byte 15 of the line)"),
    "empty file": (None, ": no examples (the file is empty)"),
}


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer_for(make_examples(50, seed=0)).save(str(path))
    return path


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_exits_with_one_clear_message(kind, tmp_path, tokenizer_file):
    line, message = BAD[kind]
    data = tmp_path / "bad.jsonl"
    data.write_bytes(b"" if line is None else json.dumps(GOOD).encode() + b"\n" + line + b"\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        ssft.main(["--model", "tiny", "--tokenizer", str(tokenizer_file), "--data", str(data), "--out", str(out)])
    assert e.value.code == f"error: {data}{message}"
    assert not out.exists()


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path, tokenizer_file):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(json.dumps(GOOD).encode() + b"\n" + BAD["tag in trace"][0] + b"\n")
    proc = subprocess.run([sys.executable, "ssft.py", "--model", "tiny", "--tokenizer", str(tokenizer_file),
                           "--data", str(data), "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"error: {data}:2: field 'traces[1]': contains the reserved "
                                                f"string '<think2>' at character 2"]
    assert not (tmp_path / "out").exists()


def test_real_format_checkpoint_and_vocabulary(tmp_path):
    """A transformers checkpoint directory with the real Qwen2.5 vocabulary: ssft.py trains it on a
    JSONL file and writes a checkpoint that transformers loads, with the tokenizer beside it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from data.tokenizer import qwen25_tokenizer
    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(Qwen2Config(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    hf.save_pretrained(tmp_path / "base")
    qwen25_tokenizer().save(str(tmp_path / "base" / "tokenizer.json"))
    lines = [{"question": f"What is {a} + {a}?", "traces": [f"{a} + {a} = {2 * a}.", f"Double {a}: {2 * a}.",
                                                             f"Twice {a} is {2 * a}.", f"{2 * a}"],
              "answer": str(2 * a), "sources": ["r1", "gemini", "oss-high", "oss-medium"]} for a in range(8)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    ssft.main(["--model", str(tmp_path / "base"), "--data", str(tmp_path / "data.jsonl"), "--steps", "2",
               "--batch", "4", "--out", str(tmp_path / "run"), "--lr", "1e-3"])
    log = read_metrics(tmp_path / "run")
    assert len(log) == 2 and sum(map(sum, log[0]["tag_source"].values())) == 16
    assert set(log[0]["tag_source"]) == {"r1", "gemini", "oss-high", "oss-medium"}
    back = Qwen2ForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert back.config.tie_word_embeddings and back.config.vocab_size == 151936
    assert (tmp_path / "run" / "model" / "tokenizer.json").exists()
