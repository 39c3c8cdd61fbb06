"""
Token sequences into forward passes: micro-batches under a token budget, the same number of passes
on every rank, and the no-gradient scoring of many continuations that share a prefix.

- `micro_batches(lengths, budget)`: groups of row indices, longest first, each within `budget`
  padded tokens. Under FSDP every forward is a collective, so `passes(world, groups)` pads each
  rank's list with empty passes (None) up to the longest rank's.
- `forward_rows(model, rows, budget, world, pad_id)`: runs (ids, targets) rows pass by pass and
  yields each pass's rows with their NLL sums and loss-token counts (or per-token NLLs), gradients
  reduced over ranks only in the last pass (FSDP accumulates the others locally);
  `last_logits(...)` the same for the logits of each row's last position (a forking token).
- `continuation_nll(model, prefixes, rows, ...)`: for rows (prefix index, ids, targets), the NLL of
  each continuation after its prefix, with every prefix computed once: its keys and values are
  cached, then each continuation attends to them. SSFT's cost grid is N*M continuations
  (`tag[fork:] + trace[:L]`) of one prefix per question (`prompt + tag[:fork]`, the same for all
  tags), so the question costs one pass instead of N*M. Equal to scoring each full row (tested).

    python -m pytest -q test_ssft.py -k grid
"""
import torch

from distributed import compute_dtype, sync_gradients
from kernels import IGNORE_INDEX
from model import KVCache


def micro_batches(lengths, budget):
    """Group row indices, longest first, so each group's padded size len(group) * max_len stays
    within `budget` tokens (a row longer than the budget gets a group of its own)."""
    groups, longest = [], 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and (len(groups[-1]) + 1) * longest <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
            longest = lengths[i]
    return groups


def passes(world, groups):
    """`groups` padded with None (an empty pass) to the longest rank's number of passes."""
    n = max(world.gather(len(groups)))
    return groups + [None] * (n - len(groups))


def pad(rows, pad_id, device, left=False):
    """(B, T) ids, right-padded (or left-padded), and the (B, T) mask of real tokens."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    real = torch.zeros(len(rows), T, dtype=torch.bool)
    for b, r in enumerate(rows):
        where = slice(T - len(r), T) if left else slice(0, len(r))
        ids[b, where], real[b, where] = torch.tensor(r, dtype=torch.long), True
    return ids.to(device), real.to(device)


def left_padded(rows, pad_id, device):
    """Rows left-padded to one length, for passes whose last positions matter (a prefill, the
    forking token): ids (B, P), position_ids (B, P) counting from each row's first real token, and
    the attention mask (B, 1, P, P), causal among real tokens; a pad position sees itself only, so
    that no attention row is empty."""
    ids, real = pad(rows, pad_id, device, left=True)
    P = ids.shape[1]
    positions = (real.cumsum(-1) - 1).clamp(min=0)
    mask = torch.ones(P, P, dtype=torch.bool, device=device).tril() & real[:, None, :]
    return ids, positions, (mask | torch.eye(P, dtype=torch.bool, device=device))[:, None]


def forward_rows(model, rows, budget, world, pad_id, per_token=False):
    """For each pass: (row indices, nll_sum (B,) fp32, n_tokens (B,)) of (ids, targets) rows, or
    per_token, (row indices, nll (B, T), mask (B, T)) (see model.row_nll)."""
    groups = passes(world, micro_batches([len(ids) for ids, _ in rows], budget))
    for k, g in enumerate(groups):
        sync_gradients(model, k == len(groups) - 1)  # reduce over ranks once, after the last pass
        ids, _ = pad([rows[i][0] for i in g] if g else [[pad_id]], pad_id, world.device)  # g None: an empty pass
        targets, _ = pad([rows[i][1] for i in g] if g else [[IGNORE_INDEX]], IGNORE_INDEX, world.device)
        nll, n = model(ids, targets=targets, per_token=per_token)  # (B,) summed NLL of each row, (B,) its tokens
        yield g or [], nll, n


def last_logits(model, rows, budget, world, pad_id):
    """For each pass of left-padded rows: (row indices, logits (B, V) fp32 of each row's last
    position), with gradients if enabled, reduced over ranks after the last pass."""
    groups = passes(world, micro_batches([len(r) for r in rows], budget))
    for k, g in enumerate(groups):
        sync_gradients(model, k == len(groups) - 1)
        ids, positions, mask = left_padded([rows[i] for i in g] if g else [[pad_id]], pad_id, world.device)
        yield g or [], model(ids, last=True, position_ids=positions, attn_mask=mask).float()


def logits_in_order(model, rows, budget, world, pad_id):
    """Logits (len(rows), V) fp32 of each row's last position, in the order of `rows` (the passes
    run longest first), without gradients."""
    out = [None] * len(rows)
    with torch.no_grad():
        for g, logits in last_logits(model, rows, budget, world, pad_id):
            for i, row in zip(g, logits):
                out[i] = row
    return torch.stack(out)


@torch.no_grad()
def continuation_nll(model, prefixes, rows, budget, world, pad_id):
    """NLL sums and loss-token counts (lists, one per row) of rows (prefix index, ids, targets):
    ids continue prefixes[prefix index]; targets[t] is the token after ids[t] (-100: none)."""
    device, dtype, config = world.device, compute_dtype(world.device), model.config
    # 1. each prefix once, left-padded; keep every layer's keys and values of its real positions
    kv = [None] * len(prefixes)
    for g in passes(world, micro_batches([len(p) for p in prefixes], budget)):
        if g is None:  # an empty pass: this rank joins the others' collectives
            model(torch.zeros(1, 1, dtype=torch.long, device=device), last=True)
            continue
        ids, positions, mask = left_padded([prefixes[i] for i in g], pad_id, device)  # (B, P)
        B, P = ids.shape
        cache = KVCache(config, B, P, device, dtype)
        model(ids, last=True, position_ids=positions, attn_mask=mask, cache=cache)  # for the cache alone
        for b, i in enumerate(g):
            n = len(prefixes[i])
            kv[i] = (cache.k[:, b, :, P - n:].clone(), cache.v[:, b, :, P - n:].clone())  # (layers, KV, n, D)
    # 2. the continuations, each attending to its prefix's cached keys and values
    nll, count = [0.0] * len(rows), [0] * len(rows)
    lengths = [len(prefixes[p]) + len(ids) for p, ids, _ in rows]
    for g in passes(world, micro_batches(lengths, budget)):
        if g is None:
            model(torch.zeros(1, 1, dtype=torch.long, device=device), last=True)
            continue
        ids, _ = pad([rows[r][1] for r in g], pad_id, device)  # (B, T)
        targets, _ = pad([rows[r][2] for r in g], IGNORE_INDEX, device)
        B, T = ids.shape
        P = max(len(prefixes[rows[r][0]]) for r in g)
        cache = KVCache(config, B, P + T, device, dtype)
        real = torch.zeros(B, P, dtype=torch.bool, device=device)  # prefix keys, right-aligned at P
        start = torch.zeros(B, dtype=torch.long, device=device)  # each continuation's first position
        for b, r in enumerate(g):
            k, v = kv[rows[r][0]]
            n = k.shape[2]
            cache.k[:, b, :, P - n:P], cache.v[:, b, :, P - n:P], real[b, P - n:] = k, v, True
            start[b] = n
        cache.len = P
        causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        mask = torch.cat([real[:, None, :].expand(B, T, P), causal.expand(B, T, T)], dim=-1)[:, None]
        positions = start[:, None] + torch.arange(T, device=device)  # (B, T)
        s, n = model(ids, targets=targets, position_ids=positions, attn_mask=mask, cache=cache)
        for r, si, ni in zip(g, s.tolist(), n.tolist()):  # one device sync per pass
            nll[r], count[r] = si, ni
    return nll, count
