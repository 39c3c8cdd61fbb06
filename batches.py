"""
Token sequences into forward passes: micro-batches under a token budget, the same number of passes
on every rank, and the no-gradient scoring of many continuations that share a prefix.

Three kinds of input, each with its own name:
- rows: (ids, targets) pairs, targets[t] the token after ids[t] or -100 (no loss): a training
  sequence (data.chat.sequence);
- prefixes: lists of ids of which only the last position matters (a prompt up to its forking token);
- continuations: (prefix index, ids, targets), ids continuing prefixes[prefix index].

- `micro_batches(lengths, budget)`: lists of indices, longest first, each within `budget` padded
  tokens: the micro-batches. Under FSDP every forward is a collective, so `passes(world, micro)`
  pads each rank's list with empty micro-batches ([]) up to the longest rank's. An empty
  micro-batch runs a one-token forward pass (and a zero backward, when gradients are on) so that
  the rank joins the others' collectives (`_join`); callers never see it.
- `forward_rows(model, rows, budget, world, pad_id)`: yields each micro-batch's row indices with
  their NLL sums and loss-token counts (or per-token NLLs), gradients reduced over ranks only in
  the last pass (FSDP accumulates the others locally); `last_logits(model, prefixes, ...)` the same
  for the logits of each prefix's last position (a forking token).
- `continuation_nll(model, prefixes, continuations, ...)`: the NLL of each continuation after its
  prefix, with every prefix computed once: its keys and values are cached, then each continuation
  attends to them. SSFT's cost grid is N*M continuations (`tag[fork:] + trace[:L]`) of one prefix
  per question (`prompt + tag[:fork]`, the same for all tags), so the question costs one pass
  instead of N*M. Equal to scoring each full row (tested).

    python -m pytest -q test_batches.py
"""
import torch

from distributed import compute_dtype, sync_gradients
from kernels import IGNORE_INDEX
from model import KVCache


def micro_batches(lengths, budget):
    """Indices of sequences of these lengths in micro-batches, longest first, each of padded size
    len(micro) * its longest within `budget` tokens (a longer sequence gets one of its own)."""
    out, longest = [], 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if out and (len(out[-1]) + 1) * longest <= budget:
            out[-1].append(i)
        else:
            out.append([i])
            longest = lengths[i]
    return out


def passes(world, micro):
    """The micro-batches `micro` padded with empty ones ([]) to the longest rank's number."""
    n = max(world.gather(len(micro)))
    return micro + [[] for _ in range(n - len(micro))]


def _join(model, device):
    """The pass of an empty micro-batch: one token forward (and a zero backward when gradients are
    on), so that this rank joins FSDP's all-gathers and gradient reductions with the others."""
    out = model(torch.zeros(1, 1, dtype=torch.long, device=device), last=True)
    if torch.is_grad_enabled():
        (out.sum() * 0).backward()


def pad(seqs, pad_id, device, left=False):
    """B lists of ids as (B, T) ids, right-padded (or left-padded), and the (B, T) mask of real tokens."""
    T = max(len(r) for r in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    real = torch.zeros(len(seqs), T, dtype=torch.bool)
    for b, r in enumerate(seqs):
        where = slice(T - len(r), T) if left else slice(0, len(r))
        ids[b, where], real[b, where] = torch.tensor(r, dtype=torch.long), True
    return ids.to(device), real.to(device)


def left_padded(seqs, pad_id, device):
    """Lists of ids left-padded to one length, for passes whose last positions matter (a prefill, the
    forking token): ids (B, P), position_ids (B, P) counting from each row's first real token, and
    the attention mask (B, 1, P, P), causal among real tokens; a pad position sees itself only, so
    that no attention row is empty."""
    ids, real = pad(seqs, pad_id, device, left=True)
    P = ids.shape[1]
    positions = (real.cumsum(-1) - 1).clamp(min=0)
    mask = torch.ones(P, P, dtype=torch.bool, device=device).tril() & real[:, None, :]
    return ids, positions, (mask | torch.eye(P, dtype=torch.bool, device=device))[:, None]


def forward_rows(model, rows, budget, world, pad_id, per_token=False, temperature=1.0):
    """For each micro-batch: (row indices, nll_sum (B,) fp32, n_tokens (B,)) of (ids, targets) rows,
    or per_token, (row indices, nll (B, T), mask (B, T)) (see model.row_nll); the NLL under the
    logits / temperature."""
    all_micro = passes(world, micro_batches([len(ids) for ids, _ in rows], budget))
    for k, micro in enumerate(all_micro):
        sync_gradients(model, k == len(all_micro) - 1)  # reduce over ranks once, after the last pass
        if not micro:
            _join(model, world.device)
            continue
        ids, _ = pad([rows[i][0] for i in micro], pad_id, world.device)
        targets, _ = pad([rows[i][1] for i in micro], IGNORE_INDEX, world.device)
        # (B,) summed NLL of each row and (B,) its tokens, or per token (B, T) and (B, T)
        nll, n = model(ids, targets=targets, per_token=per_token, temperature=temperature)
        yield micro, nll, n


def last_logits(model, prefixes, budget, world, pad_id):
    """For each micro-batch of left-padded prefixes: (prefix indices, logits (B, V) fp32 of each
    one's last position), with gradients if enabled, reduced over ranks after the last pass."""
    all_micro = passes(world, micro_batches([len(p) for p in prefixes], budget))
    for k, micro in enumerate(all_micro):
        sync_gradients(model, k == len(all_micro) - 1)
        if not micro:
            _join(model, world.device)
            continue
        ids, positions, mask = left_padded([prefixes[i] for i in micro], pad_id, world.device)
        yield micro, model(ids, last=True, position_ids=positions, attn_mask=mask).float()


@torch.no_grad()
def logits_in_order(model, prefixes, budget, world, pad_id):
    """Logits (len(prefixes), V) fp32 of each prefix's last position, in the order of `prefixes`
    (the passes run longest first)."""
    out = [None] * len(prefixes)
    for micro, logits in last_logits(model, prefixes, budget, world, pad_id):
        for i, row in zip(micro, logits):
            out[i] = row
    return torch.stack(out)


@torch.no_grad()
def continuation_nll(model, prefixes, continuations, budget, world, pad_id):
    """NLL sums and loss-token counts (lists, one per continuation) of continuations (prefix index,
    ids, targets): ids continue prefixes[prefix index]; targets[t] is the token after ids[t]."""
    device, dtype, config = world.device, compute_dtype(world.device), model.config
    # 1. each prefix once, left-padded; keep every layer's keys and values of its real positions
    kv = [None] * len(prefixes)
    for micro in passes(world, micro_batches([len(p) for p in prefixes], budget)):
        if not micro:
            _join(model, device)
            continue
        ids, positions, mask = left_padded([prefixes[i] for i in micro], pad_id, device)  # (B, P)
        B, P = ids.shape
        cache = KVCache(config, B, P, device, dtype)
        model(ids, last=True, position_ids=positions, attn_mask=mask, cache=cache)  # for the cache alone
        for b, i in enumerate(micro):
            n = len(prefixes[i])
            kv[i] = (cache.k[:, b, :, P - n:].clone(), cache.v[:, b, :, P - n:].clone())  # (layers, KV, n, D)
    # 2. the continuations, each attending to its prefix's cached keys and values
    nll, count = [0.0] * len(continuations), [0] * len(continuations)
    lengths = [len(prefixes[p]) + len(ids) for p, ids, _ in continuations]
    for micro in passes(world, micro_batches(lengths, budget)):
        if not micro:
            _join(model, device)
            continue
        ids, _ = pad([continuations[r][1] for r in micro], pad_id, device)  # (B, T)
        targets, _ = pad([continuations[r][2] for r in micro], IGNORE_INDEX, device)
        B, T = ids.shape
        P = max(len(prefixes[continuations[r][0]]) for r in micro)
        cache = KVCache(config, B, P + T, device, dtype)
        real = torch.zeros(B, P, dtype=torch.bool, device=device)  # prefix keys, right-aligned at P
        start = torch.zeros(B, dtype=torch.long, device=device)  # each continuation's first position
        for b, r in enumerate(micro):
            k, v = kv[continuations[r][0]]
            n = k.shape[2]
            cache.k[:, b, :, P - n:P], cache.v[:, b, :, P - n:P], real[b, P - n:] = k, v, True
            start[b] = n
        cache.len = P
        causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        mask = torch.cat([real[:, None, :].expand(B, T, P), causal.expand(B, T, T)], dim=-1)[:, None]
        positions = start[:, None] + torch.arange(T, device=device)  # (B, T)
        s, n = model(ids, targets=targets, position_ids=positions, attn_mask=mask, cache=cache)
        for r, si, ni in zip(micro, s.tolist(), n.tolist()):  # one device sync per pass
            nll[r], count[r] = si, ni
    return nll, count
