"""
Sampling from a model with forking tags, for the evaluator (eval.py) and the RL trainer (gfpo.py).

- Prompts (`ChatPrompts`): a task's questions as chat prompts, the tag that opens each slot's
  answer (<think{i+1}>, or the one shared tag <think> of a `mixed` model in every slot), and the
  ids that pad and stop a generation.
- Seeded generation (`sample`): every sample is drawn with its own generator, seeded by a key of
  integers such as (seed, run, question, tag, sample), so that no batch size, order or rank count
  changes it. The tag is forced; the answer is generated with the KV cache (model.generate).
- The fork policy. At the forking token, after the prompt and the tag text before it, the model's
  logits z_x restricted to the N tag tokens and tempered give
        pi(i | x) = softmax(z_x[tag ids] / T)_i                                        (fork_policy)
  the policy from which the model draws its own tag (`draw_forks`: eval's self run, GFPO's
  rollouts) and whose log-probability GFPO's loss takes.
- Its statistics over questions (`fork_statistics`), read at T = 1 over the whole vocabulary:
  the mean P(tag i | x); the entropy of that mean, over the tags (how many tags the model uses
  across questions); the mean entropy of pi(. | x) at T = 1 (how undecided it is on one question:
  GFPO should lower it where one tag answers best); the mass outside the N tags.

    python -m pytest -q test_sampling.py
"""
from dataclasses import dataclass

import numpy as np
import torch

from batches import logits_in_order
from data import Tags, encode, forking_tags, prompt_text, tag_text
from data.tokenizer import special_id


def seeded(*key):
    """A CPU generator seeded by a key of non-negative integers."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


@dataclass
class ChatPrompts:
    """A task's questions as token ids, and the tags that follow them."""
    ids: list  # ids[q]: the chat prompt of question q, up to the opened assistant turn
    slots: list  # slots[i]: the ids of the tag that opens slot i's answer
    tags: Tags  # the forking tags; None for a model trained with the one shared tag (it has no fork)
    pad_id: int
    stop: list  # ids that end an answer

    def before_fork(self, q):
        """The ids of question q up to its forking token: the prompt and the tag text before it."""
        return self.ids[q] + self.tags.before_fork


def chat_prompts(tok, task, num_tags, shared_tag=False):
    """The prompts of task (tasks.py) for a model with num_tags forking tags, or with the shared tag
    <think> in each of num_tags slots. ValueError when the tags do not fork (data.forking_tags)."""
    tags = None if shared_tag else forking_tags(tok, num_tags)
    slots = [encode(tok, tag_text(None))] * num_tags if shared_tag else tags.ids
    return ChatPrompts([encode(tok, prompt_text(question, task.system)) for question in task.questions], slots, tags,
                       special_id(tok, "<|endoftext|>"), [special_id(tok, "<|im_end|>")])


def sample(model, shape, job, *, temperature, top_p, max_new, stop, batch=256):
    """Generated ids for every index of `shape`, nested as the shape (out[a][b]... for shape (A, B, ...)):
    job(*index) gives (prompt ids, forced ids, seed key) of that sample; out holds the ids generated
    after the forced ones. `batch` samples are decoded at once (their KV cache)."""
    index = list(np.ndindex(*shape))
    jobs = [job(*ix) for ix in index]
    flat = []
    for s in range(0, len(jobs), batch):
        chunk = jobs[s:s + batch]
        gen = model.generate([p for p, _, _ in chunk], max_new, temperature, top_p, stop,
                             forced=[f for _, f, _ in chunk], generators=[seeded(*k) for _, _, k in chunk])
        flat += [ids[len(f):] for (_, f, _), ids in zip(chunk, gen)]
    return _nest(flat, shape)


def _nest(flat, shape):
    """A flat row-major list as nested lists of `shape`."""
    if len(shape) == 1:
        return list(flat)
    n = len(flat) // shape[0]
    return [_nest(flat[k * n:(k + 1) * n], shape[1:]) for k in range(shape[0])]


@torch.no_grad()
def fork_logits(model, prompts, qs, budget, world):
    """Logits (B, V) fp32 of the forking token of each question in qs (indices into prompts)."""
    return logits_in_order(model, [prompts.before_fork(q) for q in qs], budget, world, prompts.pad_id)


def fork_policy(logits, tags, temperature):
    """log pi(i | x) (B, N) from fork logits (B, V): the N tag tokens' logits at `temperature`,
    normalised among themselves. T = 0 (greedy) is read as a tiny T: all mass on the argmax."""
    return torch.log_softmax(logits[:, tags.fork_ids].float() / max(temperature, 1e-6), -1)


def draw_forks(log_pi, keys):
    """Tag indices (B, G) drawn from pi (B, N), each with its own generator: keys[b][g] seeds the
    draw of fork g of row b."""
    probs = log_pi.detach().exp().cpu()
    return torch.tensor([[int(torch.multinomial(probs[b], 1, generator=seeded(*key))) for key in row]
                         for b, row in enumerate(keys)], dtype=torch.long)


def fork_statistics(logits, tags, world):
    """The statistics of the fork over the questions of all ranks, from fork logits (B, V) at T = 1:
    mean P(tag i | x), entropy_of_mean and mean_entropy (nats, over the tags), outside."""
    p = torch.cat(world.gather(torch.softmax(logits.float(), -1)[:, tags.fork_ids].cpu()))  # (Q, N) P(tag i | x)
    within = p / p.sum(1, keepdim=True)  # (Q, N) pi(i | x) at T = 1
    mean = p.mean(0)
    return {"mean": mean.tolist(), "entropy_of_mean": float(_entropy(mean / mean.sum())),
            "mean_entropy": float(_entropy(within).mean()), "outside": float(1 - p.sum(1).mean())}


def _entropy(p):
    """Entropy in nats of the distributions along the last dimension (0 log 0 = 0)."""
    return -(p * p.clamp_min(1e-30).log()).sum(-1)
