"""
batches.py: micro-batches within the token budget, every sequence once; per-row losses (tempered
too) and last-position logits back in the caller's order, equal to one forward pass per sequence; the
prefix-shared scoring of continuations equal to scoring each full sequence; and a rank with fewer
micro-batches joining the others' passes without changing its gradients.

    python -m pytest -q test_batches.py
"""
import random

import pytest
import torch

from batches import continuation_nll, forward_rows, logits_in_order, micro_batches
from distributed import World
from model import Config, Qwen2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Qwen2(Config.preset("tiny")).eval()


def test_micro_batches_respect_the_token_budget():
    lengths = [5, 50, 7, 30, 30, 200, 1]
    micro = micro_batches(lengths, budget=60)
    assert sorted(i for m in micro for i in m) == list(range(7))
    assert all(len(m) * max(lengths[i] for i in m) <= 60 or len(m) == 1 for m in micro)
    assert [200] == [lengths[i] for i in micro[0]]  # longest first; over the budget: alone


@torch.no_grad()
def test_last_position_logits_come_back_in_row_order(model):
    """The passes run longest first; each prefix's logits must still be its own (GFPO draws its
    forks from them), equal to a forward pass of that prefix alone."""
    prefixes = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11, 12]]
    got = logits_in_order(model, prefixes, budget=8, world=World(), pad_id=0)
    for prefix, logits in zip(prefixes, got):
        direct = model(torch.tensor([prefix]), last=True)[0]
        torch.testing.assert_close(logits, direct.float(), rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_row_losses_are_each_rows_own(model, temperature):
    """Each row's NLL, at temperature T that of softmax(logits / T) (GRPO's policy sampled at T)."""
    rng = random.Random(0)
    rows = []
    for n in (9, 4, 13, 6):
        ids = [rng.randrange(1, 200) for _ in range(n)]
        rows.append((ids, [-100] * (n // 2) + [rng.randrange(1, 200) for _ in range(n - n // 2)]))
    seen = {}
    for micro, nll_sum, n_tokens in forward_rows(model, rows, budget=20, world=World(), pad_id=0,
                                                 temperature=temperature):
        for i, s, n in zip(micro, nll_sum.tolist(), n_tokens.tolist()):
            seen[i] = (s, n)
    assert sorted(seen) == [0, 1, 2, 3]
    for i, (ids, targets) in enumerate(rows):
        logp = torch.log_softmax(model(torch.tensor([ids]))[0].float() / temperature, -1)
        expected = -sum(logp[t, y] for t, y in enumerate(targets) if y != -100)
        assert seen[i][0] == pytest.approx(float(expected), rel=1e-5) and seen[i][1] == sum(y != -100 for y in targets)


@torch.no_grad()
def test_continuations_equal_scoring_each_full_sequence(model):
    prefixes = [[3, 4, 5, 6], [7, 8]]
    continuations = [(0, [9, 10, 11], [10, 11, 12]), (1, [13], [14]), (0, [15, 16], [-100, 17]),
                     (1, [18, 19], [19, 20])]
    nll, count = continuation_nll(model, prefixes, continuations, budget=12, world=World(), pad_id=0)
    for (p, ids, targets), s, n in zip(continuations, nll, count):
        full = prefixes[p] + ids
        logp = torch.log_softmax(model(torch.tensor([full]))[0].float(), -1)
        start = len(prefixes[p])
        expected = -sum(logp[start + t, y] for t, y in enumerate(targets) if y != -100)
        assert s == pytest.approx(float(expected), rel=1e-5) and n == sum(y != -100 for y in targets)


class BusierRank(World):
    """One process standing in for a rank whose neighbour has two more micro-batches."""

    def gather(self, obj):
        return [obj, obj + 2]


def test_a_rank_with_fewer_micro_batches_joins_the_passes_without_changing_its_gradients(model):
    rows = [([5, 6, 7, 8], [6, 7, 8, 9]), ([1, 2], [-100, 3])]
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    grads = []
    for world in (World(), BusierRank()):
        model.zero_grad()
        calls.clear()
        yielded = []
        for micro, nll_sum, _ in forward_rows(model, rows, budget=8, world=world, pad_id=0):
            nll_sum.sum().backward()
            yielded.append(micro)
        assert sorted(i for m in yielded for i in m) == [0, 1]  # the empty passes are never yielded
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        passes = len(calls)
    handle.remove()
    assert passes == len(yielded) + 2  # ... but run: two forward passes to join the busier rank's
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=0)
