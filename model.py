"""
Qwen2.5 in one file: config, modules, Hugging Face safetensors in and out, KV-cache sampling.

The module tree and parameter names are Hugging Face's own (`model.layers.{i}.self_attn.q_proj`,
...), so a checkpoint loads with a plain `load_state_dict` and ours load back into transformers
and vLLM. The math follows transformers' Qwen2 exactly (parity is tested to 1e-5 in fp32):
- RMSNorm normalises in fp32, casts back to the input dtype, *then* multiplies by the weight;
- RoPE is the half-split layout (rotate_half), theta = 1e6, inv_freq computed in fp32;
- grouped-query attention: KV head j serves query heads [j*n_rep, (j+1)*n_rep);
- q/k/v projections have biases, o_proj and the SwiGLU MLP do not;
- lm_head is tied to the embedding for 0.5B/1.5B/3B (tied checkpoints carry no lm_head.weight).

Run its tests and the decode benchmark:
    python -m pytest -q test_model.py
    python bench/bench_generate.py
"""
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.checkpoint import checkpoint


# The fields that fix the tensor shapes: a config.json without any of them is not a Qwen2 config.
SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads")


@dataclass
class Config:
    # Field names are those of Hugging Face's config.json so that from_json / to_json are plain.
    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 32768

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json(cls, path):
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path}: not a readable config.json ({e})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object")
        for name in SHAPE_FIELDS:
            if not isinstance(raw.get(name), int) or isinstance(raw[name], bool) or raw[name] < 1:
                raise ValueError(f"{path}: field {name!r} must be a positive integer, got {raw.get(name)!r}")
        if raw["hidden_size"] % raw["num_attention_heads"] or raw["num_attention_heads"] % raw["num_key_value_heads"]:
            raise ValueError(f"{path}: hidden_size, num_attention_heads and num_key_value_heads must divide evenly")
        # transformers >= 5 writes rope_parameters: {"rope_theta": ...}; older files a top-level key.
        rope = raw.get("rope_parameters") or {}
        # A file with neither key means transformers' Qwen2Config default, 1e4 (Qwen2.5 files say 1e6).
        raw["rope_theta"] = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
        for key, value, ok in (("use_sliding_window", raw.get("use_sliding_window"), False),  # Qwen2.5: false
                               ("hidden_act", raw.get("hidden_act", "silu"), "silu"),
                               ("rope_type", rope.get("rope_type", "default"), "default")):
            if value and value != ok:
                raise ValueError(f"{path}: {key}={value!r} is not supported (only {ok!r})")
        config = cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})
        if raw.get("head_dim") not in (None, config.head_dim):
            raise ValueError(f"{path}: head_dim={raw['head_dim']} differs from hidden_size/num_attention_heads")
        return config

    def to_json(self, dtype):
        return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
                "use_sliding_window": False, "attention_dropout": 0.0, "dtype": str(dtype).removeprefix("torch."),
                **asdict(self), "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta}}

    @classmethod
    def preset(cls, name):
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        return cls(**PRESETS[name])


# Values of the official Qwen2.5 config.json files (hidden, layers, heads/kv, MLP, vocab rows,
# eps, tied), plus small shapes for the tests and the CPU demo.
def _qwen(h, n, q, kv, inter, vocab, eps, tied, max_pos):
    return dict(hidden_size=h, num_hidden_layers=n, num_attention_heads=q, num_key_value_heads=kv,
                intermediate_size=inter, vocab_size=vocab, rms_norm_eps=eps,
                tie_word_embeddings=tied, max_position_embeddings=max_pos)


PRESETS = {
    "qwen2.5-0.5b": _qwen(896, 24, 14, 2, 4864, 151936, 1e-6, True, 32768),
    "qwen2.5-1.5b": _qwen(1536, 28, 12, 2, 8960, 151936, 1e-6, True, 131072),
    "qwen2.5-3b": _qwen(2048, 36, 16, 2, 11008, 151936, 1e-6, True, 32768),
    "qwen2.5-7b": _qwen(3584, 28, 28, 4, 18944, 152064, 1e-6, False, 131072),
    "qwen2.5-14b": _qwen(5120, 48, 40, 8, 13824, 152064, 1e-5, False, 131072),
    "qwen2.5-32b": _qwen(5120, 64, 40, 8, 27648, 152064, 1e-5, False, 131072),
    "qwen2.5-72b": _qwen(8192, 80, 64, 8, 29568, 152064, 1e-5, False, 131072),
    # vocab_size of the small shapes is overwritten by the tokenizer they are trained with.
    "tiny": _qwen(64, 2, 4, 2, 128, 512, 1e-6, True, 1024),
    "demo": _qwen(128, 4, 4, 2, 384, 512, 1e-6, True, 1024),
}


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)  # cast before the multiply, as transformers does


def rope_cos_sin(position_ids, head_dim, theta, dtype):
    """cos/sin tables (B, T, head_dim) for the half-split rotary embedding, computed in fp32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64,
                                            device=position_ids.device).float() / head_dim)
    freqs = position_ids.float()[..., None] * inv_freq  # (B, T, head_dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, head_dim)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    # x (B, H, T, D); cos/sin (B, T, D) broadcast over heads. rotate_half: (x1, x2) -> (-x2, x1).
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class KVCache:
    """Preallocated keys and values of every layer for batched decoding."""

    def __init__(self, config, batch, max_len, device, dtype):
        shape = (config.num_hidden_layers, batch, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.len = 0  # positions filled so far; advanced by Qwen2 after all layers have written

    def update(self, layer, k, v):
        # k, v (B, KV, T, D) for the new positions; returns all keys/values so far (B, KV, S, D).
        end = self.len + k.shape[2]
        self.k[layer, :, :, self.len:end] = k
        self.v[layer, :, :, self.len:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                 config.head_dim)
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.n_head * self.head_dim, bias=True)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=True)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, d, bias=False)

    def forward(self, x, cos, sin, attn_mask=None, cache=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, KV, S, D)
        # enable_gqa groups consecutive query heads per KV head, like transformers' repeat_kv.
        # No mask: causal for a block of T > 1 positions (no cache before them, see hidden_states),
        # all keys for one decoded position.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None and T > 1,
                                           enable_gqa=self.n_kv != self.n_head)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, inter = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, inter, bias=False)
        self.up_proj = nn.Linear(d, inter, bias=False)
        self.down_proj = nn.Linear(inter, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, attn_mask=None, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LMHead(nn.Linear):
    # The training loss is computed in this module's forward, not from logits by the caller: the
    # fused loss reads lm_head.weight itself so that the (B*T, V) logits never exist, and FSDP2
    # gathers lm_head.weight only inside a forward of the module that owns it.
    def forward(self, h, targets=None, per_token=False):
        return super().forward(h) if targets is None else row_nll(h, self.weight, targets, per_token)


def row_nll(h, weight, targets, per_token=False):
    """Per-row next-token loss, each row one sequence: h (B, T, d), weight (V, d), targets (B, T)
    with -100 = no loss -> nll_sum (B,) fp32 (the summed NLL of each row's targets), n_tokens (B,);
    per_token: the NLL of every position instead, (B, T) fp32, and the (B, T) mask as counts.
    Uses the fused loss of kernels/ when that package is importable; model.py copied on its own
    falls back to full logits (the same numbers, at (B*T, V) fp32 memory)."""
    B, T, d = h.shape
    try:
        from kernels import sequence_nll
    except ImportError:
        nll = F.cross_entropy(F.linear(h, weight).float().flatten(0, 1), targets.flatten(),
                              reduction="none").view(B, T)  # ignore_index -100: nll 0 there
        return (nll, targets != -100) if per_token else (nll.sum(1), (targets != -100).sum(1))
    # each position adds to its own sequence (per token) or to its row's
    seq_ids = torch.arange(B * T, device=h.device) // (1 if per_token else T)
    nll, n = sequence_nll(h.reshape(B * T, d), weight, targets.reshape(B * T), seq_ids, B * T if per_token else B)
    return (nll.view(B, T), n.view(B, T)) if per_token else (nll, n)


class Qwen2(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = nn.Module()  # a bare container so parameter names match transformers'
        self.model.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.model.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.model.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = LMHead(config.hidden_size, config.vocab_size, bias=False)
        self.gradient_checkpointing = False  # recompute each block in backward instead of storing
        self.init_weights()

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def init_weights(self, std=0.02):
        """transformers' initialisation: N(0, 0.02) weights, zero biases, unit norms (no-op on meta)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
            elif isinstance(m, RMSNorm):
                m.weight.fill_(1.0)
        self.tie_weights()

    def hidden_states(self, input_ids, position_ids=None, attn_mask=None, cache=None):
        """Final-norm hidden states (B, T, d). attn_mask (B, 1, T, S) bool, True = may attend;
        None means causal attention over the cache and the T positions (right padding needs
        nothing more)."""
        B, T = input_ids.shape
        if position_ids is None:
            start = cache.len if cache is not None else 0
            position_ids = torch.arange(start, start + T, device=input_ids.device).expand(B, T)
        if attn_mask is None and cache is not None and cache.len > 0 and T > 1:
            # SDPA's is_causal aligns the query block to the first keys; after a cache it must
            # align to the last ones.
            attn_mask = torch.ones(T, cache.len + T, dtype=torch.bool,
                                   device=input_ids.device).tril(diagonal=cache.len)
        x = self.model.embed_tokens(input_ids)  # (B, T, d)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        for block in self.model.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, attn_mask, cache, use_reentrant=False)
            else:
                x = block(x, cos, sin, attn_mask, cache)
        if cache is not None:
            cache.len += T
        return self.model.norm(x)

    def forward(self, input_ids, targets=None, last=False, per_token=False, temperature=1.0, **kwargs):
        """input_ids (B, T) -> logits (B, T, V), or (B, V) of the last position only if `last`. With
        targets (B, T) (targets[:, t] follows position t, -100 = no loss) the training loss instead, one
        row one sequence: nll_sum (B,) fp32, n_tokens (B,) (row_nll); all of logits / T (an RL policy)."""
        h = self.hidden_states(input_ids, **kwargs) / temperature  # logits / T = (h / T) W^T: no bias
        return self.lm_head(h[:, -1] if last else h, targets, per_token)

    # ---------------------------------------------------------------------------------------------
    # Hugging Face checkpoints

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=torch.float32):
        """Load a transformers Qwen2 checkpoint directory (one model.safetensors, or shards listed
        in model.safetensors.index.json). The model is built on the meta device and each tensor
        is assigned as it is read, so no second full copy of the weights is ever held."""
        config = Config.from_json(Path(path) / "config.json")
        with torch.device("meta"):
            model = cls(config)
        for name, file in checkpoint_index(path, model.checkpoint_tensors().keys()).items():
            t = read_tensor(file, name).to(device=device, dtype=dtype)
            model.load_state_dict({name: t}, strict=False, assign=True)
        model.tie_weights()
        return model

    def checkpoint_tensors(self):
        """{name: tensor} a checkpoint stores, in state_dict order (a tied lm_head.weight is re-tied)."""
        tied = self.config.tie_word_embeddings
        return {n: t for n, t in self.state_dict().items() if not (tied and n == "lm_head.weight")}

    def save_pretrained(self, path, tensors=None, dtype=None, max_shard_bytes=5 * 2**30):
        """Write config.json and safetensors in transformers' layout, sharded with an index above
        max_shard_bytes. `tensors` yields (name, tensor) pairs, by default this model's state; each
        shard is written as soon as it is full (FSDP streams gathered tensors), so at most one
        shard is held. dtype: the stored dtype (default: the first tensor's)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        shards, total, size, stored = [{}], 0, 0, dtype  # every shard but the last is on disk (emptied)
        for name, t in self.checkpoint_tensors().items() if tensors is None else tensors:
            t = t.detach().to("cpu", dtype=dtype or t.dtype).contiguous()
            stored, total = stored or t.dtype, total + t.nbytes
            if shards[-1] and size + t.nbytes > max_shard_bytes:
                save_file(shards[-1], path / f"part-{len(shards)}", metadata={"format": "pt"})
                shards[-1], size = dict.fromkeys(shards[-1]), 0
                shards.append({})
            shards[-1][name], size = t, size + t.nbytes
        save_file(shards[-1], path / f"part-{len(shards)}", metadata={"format": "pt"})
        (path / "config.json").write_text(json.dumps(self.config.to_json(stored), indent=2))
        names = ["model.safetensors"] if len(shards) == 1 else \
            [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
        for i, name in enumerate(names):  # the count is known only now
            (path / f"part-{i + 1}").rename(path / name)
        if len(shards) > 1:
            index = {"metadata": {"total_size": total},
                     "weight_map": {t: name for name, shard in zip(names, shards) for t in shard}}
            (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    # ---------------------------------------------------------------------------------------------
    # Sampling

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens, temperature=0.0, top_p=1.0, stop_ids=(), forced=None,
                 generators=None, pad_id=0):
        """Batched decoding with a KV cache.

        input_ids: a (B, T) tensor or B lists of prompt ids of different lengths (left-padded here).
        forced: B lists of ids forced as the first generated tokens of each row, e.g. the tag
            `<|im_start|><think3>\n` after the chat prompt.
        temperature 0 is greedy; otherwise softmax(logits / temperature) restricted to the top-p
        nucleus, row b drawn with generators[b]: each row's samples depend on its own generator
        alone, whatever else is in the batch.
        Returns B lists of generated ids (the forced ones included), each ending at its first stop id
        (kept) or after max_new_tokens sampled tokens."""
        rows = [list(map(int, r)) for r in (input_ids.tolist() if torch.is_tensor(input_ids) else input_ids)]
        B, forced = len(rows), [list(f) for f in forced] if forced else [[] for _ in rows]
        rows = [r + f for r, f in zip(rows, forced)]
        if min(map(len, rows)) == 0:
            raise ValueError("generate: every prompt needs at least one token")
        device = self.lm_head.weight.device
        P, S = max(map(len, rows)), max(map(len, rows)) + max_new_tokens
        ids = torch.full((B, P), pad_id, dtype=torch.long, device=device)
        valid = torch.zeros(B, S, dtype=torch.bool, device=device)  # key positions holding tokens
        for i, r in enumerate(rows):
            ids[i, P - len(r):] = torch.tensor(r, device=device)
            valid[i, P - len(r):P] = True
        positions = (valid[:, :P].cumsum(-1) - 1).clamp(min=0)  # (B, P), 0 at each prompt start
        padded = len({len(r) for r in rows}) > 1  # without padding, plain causal attention suffices
        mask = None
        if padded:
            causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
            # Pad queries attend to themselves only, so no attention row is empty (NaN); unused anyway.
            mask = ((causal & valid[:, None, :P]) | torch.eye(P, dtype=torch.bool, device=device))[:, None]
        cache = KVCache(self.config, B, S, device, self.lm_head.weight.dtype)
        logits = self(ids, last=True, position_ids=positions, attn_mask=mask, cache=cache)  # (B, V)
        out, finished, stop, pos = forced, [False] * B, set(stop_ids), positions[:, -1]
        for step in range(max_new_tokens):
            tok = sample(logits, temperature, top_p, generators)  # (B,)
            for i, t in enumerate(tok.tolist()):  # one device sync per token
                if not finished[i]:
                    out[i].append(t)
                    finished[i] = t in stop
            if all(finished) or step == max_new_tokens - 1:
                break
            valid[:, P + step] = True
            pos = pos + 1
            mask = valid[:, None, None, :P + step + 1] if padded else None  # (B, 1, 1, S)
            logits = self(tok[:, None], last=True, position_ids=pos[:, None], attn_mask=mask, cache=cache)
        return out


def sample(logits, temperature, top_p, generators=None):
    """Next token per row from logits (B, V): argmax at temperature 0, else nucleus sampling, row b
    by inverting its CDF at a uniform draw of generators[b] (default: torch's global generator)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        # Drop a token once the mass ranked above it already reaches top_p (the first always stays).
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    cdf = probs.cumsum(-1)  # (B, V)
    u = torch.rand(len(cdf), device=cdf.device) if generators is None else \
        torch.stack([torch.rand((), generator=g, device=g.device) for g in generators]).to(cdf.device)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1).clamp(max=cdf.shape[1] - 1)


def checkpoint_index(path, expected):
    """{tensor name: file} of a HF checkpoint directory (the shards of model.safetensors.index.json,
    or model.safetensors), checked against the `expected` names. Reads headers only. ValueError
    names the file that is unreadable or holds an unexpected tensor, or the directory that lacks one."""
    path, where, file = Path(path), {}, None
    index = path / "model.safetensors.index.json"
    try:
        files = [path / "model.safetensors"]
        if index.exists():
            file = index
            files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
        for file in files:
            with safe_open(file, framework="pt") as f:  # rotary_emb.inv_freq: a buffer old files carry
                where.update((name, file) for name in f.keys() if not name.endswith("rotary_emb.inv_freq"))
    except (ValueError, KeyError, AttributeError, SafetensorError, OSError) as e:
        raise ValueError(f"{file or path}: not a readable safetensors checkpoint ({e})") from None
    if unexpected := set(where) - expected:
        name = sorted(unexpected)[0]
        raise ValueError(f"{where[name]}: unexpected tensor {name!r}")
    if missing := expected - set(where):
        raise ValueError(f"{path}: checkpoint lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
    return where


def read_tensor(file, name):
    try:
        with safe_open(file, framework="pt") as f:
            return f.get_tensor(name)
    except (SafetensorError, OSError) as e:  # e.g. a file cut short by a full disk
        raise ValueError(f"{file}: tensor {name!r} cannot be read ({e})") from None


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once
