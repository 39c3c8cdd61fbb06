"""
sampling.py: generation nested as asked and independent of the batch it runs in, the fork logits
against a direct forward pass, the fork policy against its formula, forks drawn with the policy's
frequencies, and the two entropies of the fork's statistics on cases where they differ.

    python -m pytest -q test_sampling.py
"""
import math

import numpy as np
import pytest
import torch

from data import forking_tags
from data.synthetic import make_examples, tokenizer_for
from distributed import World
from model import Config, Qwen2
from sampling import LocalEngine, chat_prompts, draw_forks, fork_logits, fork_policy, fork_statistics, sample, seeded
from tasks import SyntheticTask


@pytest.fixture(scope="module")
def setup():
    tok = tokenizer_for(make_examples(200, seed=0))
    torch.manual_seed(0)
    model = Qwen2(Config(**{**Config.preset("tiny").__dict__, "vocab_size": tok.get_vocab_size()})).eval()
    task = SyntheticTask(make_examples(5, seed=2))
    return tok, model, task, chat_prompts(tok, task, 6)


def test_chat_prompts_of_a_forking_and_a_shared_tag_model(setup):
    tok, _, task, prompts = setup
    assert prompts.slots == forking_tags(tok, 6).ids and len(prompts.ids) == len(task.questions)
    shared = chat_prompts(tok, task, 6, shared_tag=True)
    assert shared.tags is None and len({tuple(s) for s in shared.slots}) == 1 and len(shared.slots) == 6
    assert prompts.before_fork(2) == prompts.ids[2] + prompts.slots[0][:prompts.tags.fork]


def test_sample_is_nested_and_does_not_depend_on_the_batch(setup):
    tok, model, task, prompts = setup
    settings = dict(temperature=1.0, top_p=0.95, max_new=12, stop=prompts.stop)
    job = lambda q, i, s: (prompts.ids[q], prompts.slots[i], (7, q, i, s))  # noqa: E731
    together = sample(LocalEngine(model, batch=256), (3, 2, 2), job, **settings)
    alone = sample(LocalEngine(model, batch=1), (3, 2, 2), job, **settings)
    assert together == alone  # each sample has its own generator: the batch changes nothing
    assert [len(together), len(together[0]), len(together[0][0])] == [3, 2, 2]
    one = sample(LocalEngine(model), (1,), lambda _: job(2, 1, 0), **settings)[0]
    assert together[2][1][0] == one  # out[q][i][s] is the sample of index (q, i, s)
    assert together[2][1][0] != together[2][1][1]  # another seed, another sample (can fail: it did not)


def test_fork_logits_equal_a_direct_forward_pass(setup):
    _, model, task, prompts = setup
    logits = fork_logits(model, prompts, [4, 0, 2], budget=60, world=World())  # several left-padded passes
    for row, q in zip(logits, [4, 0, 2]):
        direct = model(torch.tensor([prompts.before_fork(q)]))[0, -1]
        torch.testing.assert_close(row, direct, rtol=1e-5, atol=1e-5)


def test_fork_policy_is_the_tempered_softmax_over_the_tags(setup):
    _, _, _, prompts = setup
    tags = prompts.tags
    torch.manual_seed(1)
    logits = torch.randn(3, 400)
    for T in (0.5, 1.0, 2.0):
        z = logits[:, tags.fork_ids].double() / T
        expected = z.exp() / z.exp().sum(1, keepdim=True)
        torch.testing.assert_close(fork_policy(logits, tags, T).exp().double(), expected, rtol=1e-5, atol=1e-7)
    greedy = fork_policy(logits, tags, 0.0).exp()  # T = 0: all mass on the argmax among the tags
    assert torch.equal(greedy.argmax(1), logits[:, tags.fork_ids].argmax(1)) and (greedy.max(1).values > 0.999).all()


def test_forks_are_drawn_with_the_policy_frequencies():
    pi = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.0, 1.0]])
    forks = draw_forks(pi.log(), [[(3, b, g) for g in range(4000)] for b in range(2)])  # (2, 4000)
    freq = torch.stack([(forks[0] == i).float().mean() for i in range(3)])
    torch.testing.assert_close(freq, pi[0], atol=0.025, rtol=0)
    assert (forks[1] == 2).all()
    again = draw_forks(pi.log(), [[(3, b, g) for g in range(4000)] for b in range(2)])
    assert torch.equal(forks, again)  # seeded by the keys alone


def test_the_two_entropies_of_the_fork():
    """Two questions, each sure of a different tag: every question decided (mean entropy 0), the
    tags used evenly across questions (entropy of the mean log 2); a mass outside the tags."""
    tags = type("Tags", (), {"fork_ids": [0, 1]})
    big = 30.0
    logits = torch.tensor([[big, -big, math.log(0.25) + big], [-big, big, math.log(0.25) + big]])
    stats = fork_statistics(logits, tags, World())
    p_tag = 1 / (1 + 0.25)  # P(the chosen tag | x) over the whole vocabulary
    assert stats["mean"] == pytest.approx([p_tag / 2, p_tag / 2], rel=1e-6)
    assert stats["mean_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert stats["entropy_of_mean"] == pytest.approx(math.log(2), rel=1e-6)
    assert stats["outside"] == pytest.approx(1 - p_tag, rel=1e-6)
    undecided = fork_statistics(torch.zeros(2, 3), tags, World())  # both unsure: the two agree
    assert undecided["mean_entropy"] == pytest.approx(math.log(2)) == undecided["entropy_of_mean"]


def test_seeded_generators_follow_their_key():
    draw = lambda *key: torch.rand(3, generator=seeded(*key)).tolist()  # noqa: E731
    assert draw(0, 1, 2) == draw(0, 1, 2) and draw(0, 1, 2) != draw(0, 2, 1)
    assert len({tuple(draw(0, r, 0, 0, 0)) for r in range(5)}) == 5
    assert np.isfinite(draw(2**31, 0)).all()
