"""
gfpo.py: advantages and both losses against hand-computed values (zero-variance groups and the clip
included), the ratio exactly 1 at the first update with the prompts over several micro-batches, the
GFPO loss blind to every rollout token after the fork, GRPO's log-probabilities those of the policy
that sampled (at T, the fork's restricted to the tags) and its loss and gradients against a naive
full-logits implementation, a step of equal rewards that changes nothing, the exact KL and its
gradient, two gloo ranks against one process, exact resume, and bad input.

    python -m pytest -q test_gfpo.py
"""
import math
import subprocess
import sys
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

import gfpo
import ssft
from batches import micro_batches
from conftest import CPU_ENV, ROOT, TINY_RUN, TORCHRUN, read_metrics
from data import forking_tags
from data.tokenizer import load_tokenizer
from data.synthetic import make_examples, tokenizer_for
from distributed import World
from flags import parse_flags
from model import Qwen2
from sampling import LocalEngine
from tasks import load_task

SMALL = ["--steps", "3", "--batch", "4", "--group", "4", "--train-questions", "48", "--eval-questions", "0",
         "--max-new", "40"]


@pytest.fixture(scope="module")
def ssft_run(tmp_path_factory):
    """A tiny SSFT model, the starting point of every run below."""
    out = tmp_path_factory.mktemp("ssft")
    ssft.main([*TINY_RUN, "--steps", "20", "--out", str(out), "--export-dtype", "float32"])
    return out


def test_advantages_by_hand():
    adv, kept = gfpo.advantages([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    assert kept.tolist() == [True, False, True]
    std = math.sqrt(4 * 0.25 / 3)  # Bessel: the sum of squared deviations / (G - 1)
    np.testing.assert_allclose(adv[0], np.array([0.5, -0.5, -0.5, 0.5]) / (std + 1e-6), rtol=1e-12)
    assert adv[1].tolist() == [0, 0, 0, 0]  # a zero-variance group: no signal
    std3 = math.sqrt((3 * 0.25 ** 2 + 0.75 ** 2) / 3)
    np.testing.assert_allclose(adv[2], np.array([-0.25, -0.25, -0.25, 0.75]) / (std3 + 1e-6), rtol=1e-12)
    assert adv.dtype == np.float64


def test_gfpo_objective_by_hand_with_the_clip():
    tags = forking_tags(tokenizer_for(make_examples(50, seed=0)), 3)
    logits = torch.zeros(1, max(tags.fork_ids) + 1)
    logits[0, tags.fork_ids] = torch.tensor([0.0, math.log(2), math.log(5)])  # restricted at T=1: 1/8, 2/8, 5/8
    logp_old = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))  # the policy that sampled
    forks, adv = torch.tensor([[0, 1, 2]]), torch.tensor([[1.0, -1.0, 1.0]])
    L, kl = gfpo.gfpo_objective(logits, forks=forks, logp_old=logp_old, adv=adv, tags=tags, temperature=1.0,
                                clip_low=0.2, clip_high=0.1, kept_rollouts=6, prompts=2)
    # ratios 0.5, 1.0, 1.25: min(rho A, clip(rho) A) = 0.5 (A>0, below the clip: not clipped), -1.0,
    # and min(1.25, 1.1) = 1.1 (clipped above); L divides by the global batch's 6 kept rollouts
    assert L.item() == pytest.approx(-(0.5 - 1.0 + 1.1) / 6, rel=1e-6) and kl.item() == 0.0


def test_exact_kl_at_the_fork_weighted_by_beta():
    torch.manual_seed(0)
    logits, ref = torch.randn(3, 50), torch.randn(3, 50)
    tags = forking_tags(tokenizer_for(make_examples(50, seed=0)), 3)
    L, kl = gfpo.gfpo_objective(logits, forks=torch.zeros(3, 1, dtype=torch.long), logp_old=torch.zeros(3, 1),
                                adv=torch.zeros(3, 1), tags=tags, temperature=1.0, clip_low=0.2, clip_high=0.2,
                                kept_rollouts=3, prompts=4, beta=0.1, ref_logits=ref)
    p, q = torch.softmax(logits.double(), -1), torch.softmax(ref.double(), -1)
    direct = sum(float((p[b] * (p[b] / q[b]).log()).sum()) for b in range(3))
    assert kl.item() == pytest.approx(direct, rel=1e-5)
    torch_kl = torch.nn.functional.kl_div(q.log(), p, reduction="sum").item()  # KL(p || q), its own way
    assert kl.item() == pytest.approx(torch_kl, rel=1e-5)
    assert L.item() == pytest.approx(0.1 * direct / 4, rel=1e-5)  # A = 0: L is beta x the KL's mean over 4 prompts


def test_grpo_objective_by_hand():
    logp = torch.tensor([[0.0, -1.0, -2.0]])
    old = torch.tensor([[0.0, -1.5, -2.0]])  # ratios exp(-1 + 1.5) = 1.65 (clipped to 1.28), 1.0
    mask = torch.tensor([[0.0, 1.0, 1.0]])  # the first position is not the policy's
    loss = gfpo.grpo_objective(logp, mask, logp_old=old, adv=torch.tensor([[2.0]]), clip_low=0.2, clip_high=0.28,
                               tokens=4)
    assert loss.item() == pytest.approx(-(1.28 * 2 + 1.0 * 2) / 4, rel=1e-6)


def small_setup(ssft_run, mode, epochs=1, qs=(0, 1, 2, 3), micro_tokens=300):
    """The rollouts of the first step on prompts qs (several micro-batches at --micro-tokens 300)."""
    cfg, _ = parse_flags(gfpo.GFPOConfig, ["--model", str(ssft_run), "--mode", mode, "--epochs", str(epochs),
                                           "--micro-tokens", str(micro_tokens), *SMALL])
    world = World()
    data = gfpo.PromptSet(cfg, world, ssft_run / "model")
    model = Qwen2.from_pretrained(ssft_run / "model")
    ro = gfpo.rollouts(model, None, LocalEngine(model), data, list(qs), cfg, world, step=0)
    return cfg, world, data, model, ro


def gradients(model, ro, data, cfg, world):
    """The update's loss and gradients for rollouts `ro`."""
    model.zero_grad()
    update = gfpo.gfpo_update if cfg.mode == "gfpo" else gfpo.grpo_update
    loss, _ = update(model, ro, data, cfg, world)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters()}


ADVANTAGES = gfpo.advantages(np.array([[1, 0, 0, 1], [0, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 1]]))


def test_gfpo_ignores_every_token_after_the_fork(ssft_run):
    """Rollouts whose answers differ after the forking token, in every token and in length (rollout g
    longer by g tokens; same rewards), give the same GFPO loss and gradients: an update that read the
    answers (their log-probabilities, or their lengths as a token mean would) moves them, as the
    same change moves GRPO's, so the check can fail."""
    adv, kept = ADVANTAGES
    for mode, same in (("gfpo", True), ("grpo", False)):
        cfg, world, data, model, ro = small_setup(ssft_run, mode)
        ro = replace(ro, advantages=adv, kept=kept)
        V = data.tok.get_vocab_size()
        other = replace(ro, generated=[[[(t * 7 + 3) % V for t in ids] + ids[:g] for g, ids in enumerate(row)]
                                       for row in ro.generated])
        a, b = gradients(model, ro, data, cfg, world), gradients(model, other, data, cfg, world)
        assert (a[0] == b[0]) == same
        assert all(torch.equal(a[1][n], b[1][n]) for n in a[1]) == same


# Prompts whose text up to the fork has 25, 26, 27, 28, 29 and 30 tokens: the passes run longest first.
ASCENDING = [9, 2, 1, 0, 5, 4]


@pytest.mark.parametrize("mode", ["gfpo", "grpo"])
def test_the_ratio_is_exactly_1_at_the_first_update(ssft_run, mode, monkeypatch):
    """With --epochs 1 the policy that updates is the one that sampled: rho = 1 exactly at every
    forking token (GRPO: and answer token), with the prompts in 3 micro-batches of left-padded
    prompts of different lengths, run in another order than the rollouts' (the order bug: fork
    logits computed in one order, the update's micro-batches in another)."""
    cfg, world, data, model, ro = small_setup(ssft_run, mode, qs=ASCENDING, micro_tokens=60)
    order = micro_batches([len(data.prompts.before_fork(q)) for q in ro.qs], cfg.micro_tokens)
    assert len(order) == 3 and sum(order, []) != list(range(len(ro.qs)))
    seen = []  # (log pi_theta, log pi_old) of every call of the clipped objective

    def recording(logp, logp_old, *args):
        seen.append((logp.detach(), logp_old))
        return clipped(logp, logp_old, *args)

    clipped = gfpo.clipped
    monkeypatch.setattr(gfpo, "clipped", recording)
    gradients(model, ro, data, cfg, world)
    assert all(torch.equal(logp, old) for logp, old in seen)  # rho = exp(0) = 1, bit for bit
    forks = torch.cat([logp for logp, _ in seen[:len(order)]])  # (B, G) the fork's, in the passes' order
    assert torch.equal(forks, ro.logp_old[sum(order, [])])
    assert not torch.equal(forks, ro.logp_old)  # the check can fail: a mixed-up order changes log pi_old


def test_grpo_log_probabilities_are_those_of_the_policy_that_sampled(ssft_run):
    """GRPO's per-token log-probabilities against a naive fp32 computation on the full logits at
    the rollouts' temperature T: log softmax(z / T) at every answer token, nothing at the prompt
    and the tag, and at the forking token log softmax(z[tag ids] / T), the fork policy's."""
    cfg, world, data, model, ro = small_setup(ssft_run, "grpo")
    ours = gfpo.token_logp(model, gfpo.grpo_rows(ro, data, cfg.max_len), cfg, world, data.prompts.pad_id)
    tags, T = data.prompts.tags, cfg.temperature
    assert T != 1
    for b, q in enumerate(ro.qs):
        prompt = data.prompts.ids[q]
        for g, (tag, gen) in enumerate(zip(ro.tag_ids[b], ro.generated[b])):
            with torch.no_grad():
                z = model(torch.tensor([(prompt + tag + gen)[:-1]]))[0].float() / T  # (L, V)
            fork = len(prompt) + tags.fork - 1  # the position whose next token is the forking token
            naive = torch.log_softmax(z[fork, tags.fork_ids], -1)[ro.forks[b, g]]
            assert ro.logp_old[b, g].item() == pytest.approx(naive.item(), abs=1e-5)
            start = len(prompt) + len(tag) - 1  # the position whose next token is the answer's first
            naive = torch.log_softmax(z[start:], -1).gather(1, torch.tensor(gen)[:, None])[:, 0]  # (len(gen),)
            row = ours[b * cfg.group + g]
            torch.testing.assert_close(row[start:], naive, rtol=1e-5, atol=1e-5)
            assert not row[:start].any()


def test_grpo_matches_a_naive_full_logits_loss(ssft_run):
    """Loss and gradients of the GRPO update against a naive one, rollout by rollout on the full
    logits at T (log softmax(z / T) at the answer's tokens, log softmax(z[tag ids] / T) at the
    forking token), with an old policy different from the current one so that the clip binds."""
    cfg, world, data, model, ro = small_setup(ssft_run, "grpo", epochs=2)
    adv, kept = ADVANTAGES
    tags, T = data.prompts.tags, cfg.temperature
    assert len(ro.token_logp_old) == 16  # with --epochs 2 the rollouts recorded pi_old per token
    torch.manual_seed(1)
    fork_old = ro.logp_old + 0.3 * torch.randn(ro.logp_old.shape)  # (B, G) a stale sampling policy
    answer_old = []  # [b * G + g] laid out as token_logp's: one per position of the row, 0 before the answer
    model.zero_grad()
    total, tokens, clipped = 0.0, 0, 0
    for b, q in enumerate(ro.qs):
        prompt = data.prompts.ids[q]
        for g, (tag, gen) in enumerate(zip(ro.tag_ids[b], ro.generated[b])):
            z = model(torch.tensor([(prompt + tag + gen)[:-1]]))[0].float() / T  # (L, V)
            fork, start = len(prompt) + tags.fork - 1, len(prompt) + len(tag) - 1
            logp = torch.cat([torch.log_softmax(z[fork, tags.fork_ids], -1)[ro.forks[b, g]][None],
                              torch.log_softmax(z[start:], -1).gather(1, torch.tensor(gen)[:, None])[:, 0]])
            torch.testing.assert_close(ro.token_logp_old[b * cfg.group + g][start:], logp[1:].detach(),
                                       rtol=1e-5, atol=1e-5)  # recorded at T
            answer_old.append(torch.cat([torch.zeros(start), logp[1:].detach() + 0.3 * torch.randn(len(gen))]))
            rho = torch.exp(logp - torch.cat([fork_old[b, g][None], answer_old[-1][start:]]))  # (1 + len(gen),)
            a = float(adv[b, g])
            obj = torch.minimum(rho * a, rho.clamp(1 - cfg.clip_low, 1 + cfg.clip_high) * a)
            clipped += int(((rho < 1 - cfg.clip_low) | (rho > 1 + cfg.clip_high)).sum())
            total = total - obj.sum()
            tokens += len(obj) if kept[b] else 0
    (total / tokens).backward()
    naive = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert clipped > 0
    stale = replace(ro, advantages=adv, kept=kept, logp_old=fork_old, token_logp_old=answer_old)
    loss, ours = gradients(model, stale, data, cfg, world)
    assert loss == pytest.approx(total.item() / tokens, rel=1e-5)
    for n in naive:
        torch.testing.assert_close(ours[n], naive[n], rtol=1e-4, atol=1e-6)


def test_two_gloo_ranks_equal_one_process(ssft_run, tmp_path):
    args = ["--model", str(ssft_run), *SMALL]
    for name, launcher in (("one", [sys.executable]), ("two", TORCHRUN)):
        proc = subprocess.run([*launcher, "gfpo.py", *args, "--out", str(tmp_path / name)],
                              cwd=ROOT, env=CPU_ENV, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        assert a["reward"] == b["reward"] and a["accuracy_per_tag"] == b["accuracy_per_tag"]  # the same rollouts
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["tag_distribution"]["mean"] == pytest.approx(b["tag_distribution"]["mean"], abs=1e-6)


def test_beta_weighs_the_exact_kl_to_the_initial_model(ssft_run, tmp_path):
    """--beta > 0 end to end: the reference model's fork logits reach the objective; the KL is 0 at
    the first step (the policy is the reference) and positive once the policy has moved."""
    gfpo.train(*parse_flags(gfpo.GFPOConfig, ["--model", str(ssft_run), *SMALL, "--beta", "0.5", "--lr", "1e-3",
                                              "--out", str(tmp_path / "beta")]))
    kl = read_metrics(tmp_path / "beta", "kl")
    assert kl[0] == 0.0 and all(k >= 0 for k in kl) and kl[-1] > 1e-6


def test_the_kl_gradient_is_its_closed_form():
    """d/dz_x of beta / #prompts sum_x KL(softmax(z_x) || r_x) = beta / #prompts p_x (log p_x - log r_x
    - KL_x), with A = 0 so that the policy term adds nothing: the KL pulls toward the reference."""
    torch.manual_seed(0)
    logits, ref = torch.randn(3, 50, requires_grad=True), torch.randn(3, 50)
    tags = forking_tags(tokenizer_for(make_examples(50, seed=0)), 3)
    L, kl = gfpo.gfpo_objective(logits, forks=torch.zeros(3, 1, dtype=torch.long), logp_old=torch.zeros(3, 1),
                                adv=torch.zeros(3, 1), tags=tags, temperature=0.7, clip_low=0.2, clip_high=0.2,
                                kept_rollouts=3, prompts=4, beta=0.1, ref_logits=ref)
    L.backward()
    logp, logr = torch.log_softmax(logits.detach().double(), -1), torch.log_softmax(ref.double(), -1)  # (3, 50)
    each = (logp.exp() * (logp - logr)).sum(-1, keepdim=True)  # (3, 1) KL_x
    torch.testing.assert_close(logits.grad.double(), 0.1 / 4 * logp.exp() * (logp - logr - each),
                               rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mode", ["gfpo", "grpo"])
def test_a_step_of_equal_rewards_changes_nothing(ssft_run, tmp_path, monkeypatch, mode):
    """Every answer graded 1, so every group is zero-variance: the loss and the gradient are 0, no
    weight moves though the learning rate is not 0, nothing divides by zero (numpy's and Python's
    warnings are errors here), every step is logged and the run ends with its export."""
    def graded_1(*args, **kwargs):
        task = load_task(*args, **kwargs)
        task.grade = lambda response, q: 1.0
        return task

    monkeypatch.setattr(gfpo, "load_task", graded_1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        gfpo.train(*parse_flags(gfpo.GFPOConfig, ["--model", str(ssft_run), "--mode", mode, *SMALL, "--steps", "2",
                                                  "--export-dtype", "float32", "--out", str(tmp_path / mode)]))
    logs = read_metrics(tmp_path / mode)
    assert [m["step"] for m in logs] == [1, 2]
    for m in logs:
        assert m["reward"] == 1.0 and m["zero_variance"] == 1.0 and m["lr"] > 0
        assert m["loss"] == m["grad_norm"] == m["advantage_abs_mean"] == m["advantage_max"] == 0.0
    before, after = Qwen2.from_pretrained(ssft_run / "model"), Qwen2.from_pretrained(tmp_path / mode / "model")
    assert all(torch.equal(t, after.state_dict()[n]) for n, t in before.state_dict().items())


@pytest.mark.parametrize("update", ["opener", "all"])
def test_what_gfpo_moves(ssft_run, tmp_path, monkeypatch, update):
    """--update opener moves the embedding row of the tag's opener ("<think") alone, every other
    weight bitwise as it was; --update all (the default) moves the rest too. Rewards from a hash of
    the answer, so that groups differ (the tiny model answers nothing right)."""
    def hashed(*args, **kwargs):
        task = load_task(*args, **kwargs)
        task.grade = lambda response, q: float(sum(map(ord, response)) % 2)
        return task

    monkeypatch.setattr(gfpo, "load_task", hashed)
    args = ["--model", str(ssft_run), *SMALL, "--export-dtype", "float32", "--out", str(tmp_path / update)]
    gfpo.train(*parse_flags(gfpo.GFPOConfig, args + (["--lr", "1e-3"] if update == "all" else ["--update", "opener"])))
    before, after = (Qwen2.from_pretrained(d / "model").state_dict() for d in (ssft_run, tmp_path / update))
    tags = forking_tags(load_tokenizer(ssft_run / "model"), 6)
    opener = tags.ids[0][tags.fork - 1]
    moved = {n for n, t in before.items() if not torch.equal(t, after[n])}
    emb = "model.embed_tokens.weight"
    rows = (before[emb] != after[emb]).any(1).nonzero().flatten().tolist()
    assert read_metrics(tmp_path / update, "zero_variance")[0] < 1  # there was something to learn
    if update == "opener":
        assert moved <= {emb, "lm_head.weight"} and rows == [opener]  # (the tied lm_head is the same tensor)
    else:
        assert len(moved) > 10 and len(rows) > 1


def test_resume_continues_exactly(ssft_run, tmp_path):
    args = ["--model", str(ssft_run), *SMALL, "--steps", "4"]
    gfpo.train(*parse_flags(gfpo.GFPOConfig, args + ["--out", str(tmp_path / "full")]))
    gfpo.train(*parse_flags(gfpo.GFPOConfig, args + ["--out", str(tmp_path / "cut"), "--stop-after", "2"]))
    gfpo.train(*parse_flags(gfpo.GFPOConfig, ["--out", str(tmp_path / "cut"), "--resume"]))
    full, cut = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    for key in ("loss", "reward", "grad_norm", "tag_distribution"):
        assert [m[key] for m in cut] == [m[key] for m in full]


@pytest.mark.parametrize("args,message", [
    (["--shared-tag"], "--shared-tag: a model with one shared tag has no forking token; use --mode grpo"),
    (["--mode", "grpo", "--beta", "0.1"], "--beta 0.1: the exact KL is at the forking token, for --mode gfpo only"),
    (["--update", "opener", "--weight-decay", "0.1"], "--update opener: for --mode gfpo only, and without --weight-decay"),
    (["--mode", "grpo", "--update", "opener"], "--update opener: for --mode gfpo only, and without --weight-decay"),
    (["--group", "1"], "--group 1: must be at least 2"),
    (["--clip-low", "1"], "--clip-low 1.0: must be less than 1"),
    (["--batch", "7", "--train-questions", "6"], "--batch 7: must be at most the 6 prompts"),
])
def test_bad_input_gives_one_line(ssft_run, tmp_path, args, message):
    proc = subprocess.run([sys.executable, "gfpo.py", "--model", str(ssft_run), *SMALL, *args,
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_default_model_says_what_to_run(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "gfpo.py")], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "run `python ssft.py` first" in proc.stderr
