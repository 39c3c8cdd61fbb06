"""
gfpo.py: advantages and both losses against hand-computed values (zero-variance groups and the clip
included), the GFPO gradient blind to every rollout token after the fork, the GRPO loss and
gradients against a naive full-logits implementation, the exact KL, two gloo ranks against one
process, exact resume, and bad input.

    python -m pytest -q test_gfpo.py
"""
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

import gfpo
import ssft
from conftest import CPU_ENV, ROOT, TINY_RUN, TORCHRUN, read_metrics
from data import forking_tags
from data.synthetic import make_examples, tokenizer_for
from distributed import World
from flags import parse_flags
from model import Qwen2

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
    nll = torch.tensor([[0.0, 1.0, 2.0]])
    old = torch.tensor([[0.0, -1.5, -2.0]])  # ratios exp(-1 + 1.5) = 1.65 (clipped to 1.28), 1.0
    mask = torch.tensor([[0.0, 1.0, 1.0]])  # the first position is not the policy's
    loss = gfpo.grpo_objective(nll, mask, logp_old=old, adv=torch.tensor([2.0]), clip_low=0.2, clip_high=0.28,
                               tokens=4)
    assert loss.item() == pytest.approx(-(1.28 * 2 + 1.0 * 2) / 4, rel=1e-6)


def small_setup(ssft_run, mode, epochs=1):
    """The rollouts of the first step on four prompts (several micro-batches at --micro-tokens 300)."""
    cfg, _ = parse_flags(gfpo.GFPOConfig, ["--model", str(ssft_run), "--mode", mode, "--epochs", str(epochs),
                                           "--micro-tokens", "300", *SMALL])
    world = World()
    data = gfpo.PromptSet(cfg, world, ssft_run / "model")
    model = Qwen2.from_pretrained(ssft_run / "model")
    ro = gfpo.rollouts(model, None, data, [0, 1, 2, 3], cfg, world, step=0)
    return cfg, world, data, model, ro


def gradients(model, ro, data, cfg, world):
    """The update's loss and gradients for rollouts `ro`."""
    model.zero_grad()
    update = gfpo.gfpo_update if cfg.mode == "gfpo" else gfpo.grpo_update
    loss, _ = update(model, ro, data, cfg, world)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters()}


ADVANTAGES = gfpo.advantages(np.array([[1, 0, 0, 1], [0, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 1]]))


def test_gfpo_ignores_every_token_after_the_fork(ssft_run):
    """Rollouts whose answers differ everywhere after the forking token (same rewards) give the
    same GFPO loss and gradients; the same change moves GRPO's, so the check can fail."""
    adv, kept = ADVANTAGES
    for mode, same in (("gfpo", True), ("grpo", False)):
        cfg, world, data, model, ro = small_setup(ssft_run, mode)
        ro = replace(ro, advantages=adv, kept=kept)
        other = replace(ro, generated=[[[(t * 7 + 3) % data.tok.get_vocab_size() for t in ids] for ids in row]
                                       for row in ro.generated])
        a, b = gradients(model, ro, data, cfg, world), gradients(model, other, data, cfg, world)
        if same:  # (GRPO's loss value is -sum A at ratio 1 whatever the tokens; its gradient is not)
            assert a[0] == b[0]
        assert all(torch.equal(a[1][n], b[1][n]) for n in a[1]) == same


def test_grpo_matches_a_naive_full_logits_loss(ssft_run):
    """Loss and gradients of the GRPO update against log_softmax of the full logits, with an old
    policy different from the current one so that the clip binds on some tokens."""
    cfg, world, data, model, ro = small_setup(ssft_run, "grpo", epochs=2)
    adv, kept = ADVANTAGES
    rows = gfpo.grpo_rows(ro, data, cfg.max_len)
    assert len(rows) == 16 and len(ro.token_logp_old) == 16  # the rollouts recorded pi_old per token
    torch.manual_seed(1)
    old = [torch.tensor([0.0]) for _ in rows]
    # the naive side: full logits, one rollout at a time
    model.zero_grad()
    total, tokens, clipped = 0.0, 0, 0
    for i, (ids, targets) in enumerate(rows):
        logp = torch.log_softmax(model(torch.tensor([ids]))[0].float(), -1)  # (T, V)
        t = torch.tensor(targets)
        mask = t != -100
        lp = logp.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
        torch.testing.assert_close(ro.token_logp_old[i] * mask, lp.detach() * mask, rtol=1e-5, atol=1e-5)
        old[i] = (lp.detach() + 0.3 * torch.randn(len(ids))) * mask  # a stale sampling policy
        rho = torch.exp(lp - old[i])
        a = float(adv.reshape(-1)[i])
        obj = torch.minimum(rho * a, rho.clamp(1 - cfg.clip_low, 1 + cfg.clip_high) * a)
        clipped += int(((rho < 1 - cfg.clip_low) | (rho > 1 + cfg.clip_high))[mask].sum())
        total = total - (obj * mask).sum()
        tokens += int(mask.sum()) if kept[i // cfg.group] else 0
    (total / tokens).backward()
    naive = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert clipped > 0
    loss, ours = gradients(model, replace(ro, advantages=adv, kept=kept, token_logp_old=old), data, cfg, world)
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
    assert kl[0] == pytest.approx(0.0, abs=1e-7) and kl[-1] > 1e-6


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
