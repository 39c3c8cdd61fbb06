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
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.checkpoint import checkpoint

from kernels import sequence_nll


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
        with open(path) as f:
            raw = json.load(f)
        if raw.get("use_sliding_window", False):
            raise ValueError(f"{path}: use_sliding_window=true is not supported (Qwen2.5 ships false)")
        if raw.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{path}: hidden_act={raw['hidden_act']!r}, expected 'silu'")
        # transformers >= 5 writes rope_parameters: {"rope_theta": ...}; older files a top-level key.
        rope = raw.get("rope_parameters") or {}
        # A file with neither key means transformers' Qwen2Config default, 1e4 (Qwen2.5 files say 1e6).
        raw["rope_theta"] = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"{path}: rope_type={rope['rope_type']!r} is not supported")
        config = cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})
        head_dim = raw.get("head_dim")
        if head_dim is not None and head_dim != config.head_dim:
            raise ValueError(f"{path}: head_dim={head_dim} differs from hidden_size/num_attention_heads")
        return config

    def to_json(self, dtype):
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_act": "silu",
            "use_sliding_window": False,
            "attention_dropout": 0.0,
            "dtype": str(dtype).removeprefix("torch."),
            **asdict(self),
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
        }

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
    """The output projection; with targets its forward returns per-sequence losses instead.

    The loss lives in this module's forward because FSDP2 only unshards lm_head.weight inside a
    forward of the module that owns it, and the fused loss reads the weight directly.
    """

    def forward(self, h, targets=None):
        if targets is None:
            return super().forward(h)  # logits (..., V)
        B, T, d = h.shape
        seq_ids = torch.arange(B, device=h.device).repeat_interleave(T)  # row b is sequence b
        # Under autocast, do what it would do for a Linear (compute in its dtype) by hand: the
        # fused loss is a custom autograd Function, whose backward autocast does not reach.
        dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) \
            else self.weight.dtype
        with torch.autocast(h.device.type, enabled=False):
            return sequence_nll(h.reshape(B * T, d).to(dtype), self.weight.to(dtype),
                                targets.reshape(B * T), seq_ids, B)


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

    def forward(self, input_ids, targets=None, **kwargs):
        """input_ids (B, T) -> logits (B, T, V); or, with targets (B, T) aligned to the positions
        (targets[:, t] is the token to predict after position t, -100 = no loss), the per-sequence
        fp32 NLL sums (B,) and loss-token counts (B,), without materialising the logits."""
        return self.lm_head(self.hidden_states(input_ids, **kwargs), targets)

    # ---------------------------------------------------------------------------------------------
    # Hugging Face checkpoints

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=torch.float32):
        """Load a transformers Qwen2 checkpoint directory (one model.safetensors, or shards listed
        in model.safetensors.index.json). The model is built on the meta device and each tensor
        is assigned as it is read, so no second full copy of the weights is ever held."""
        path = Path(path)
        config = Config.from_json(path / "config.json")
        with torch.device("meta"):
            model = cls(config)
        expected = set(model.state_dict()) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
        loaded = set()
        for file in checkpoint_files(path):
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    if name.endswith("rotary_emb.inv_freq"):  # old checkpoints carry this buffer
                        continue
                    if name not in expected:
                        raise ValueError(f"{file}: unexpected tensor {name!r}")
                    t = f.get_tensor(name).to(device=device, dtype=dtype)
                    model.load_state_dict({name: t}, strict=False, assign=True)
                    loaded.add(name)
        if missing := expected - loaded:
            raise ValueError(f"{path}: checkpoint lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
        model.tie_weights()
        return model

    def save_pretrained(self, path, state_dict=None, max_shard_bytes=5 * 2**30):
        """Write config.json and safetensors in transformers' layout, sharded with an index above
        max_shard_bytes. state_dict overrides self.state_dict() (FSDP passes the gathered one)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        sd = dict(self.state_dict() if state_dict is None else state_dict)
        if self.config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)  # transformers re-ties it from the embedding
        sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
        dtype = next(iter(sd.values())).dtype
        with open(path / "config.json", "w") as f:
            json.dump(self.config.to_json(dtype), f, indent=2)
        shards, size = [[]], 0
        for name, t in sd.items():
            nbytes = t.numel() * t.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(name)
            size += nbytes
        if len(shards) == 1:
            save_file(sd, path / "model.safetensors", metadata={"format": "pt"})
            return
        weight_map = {}
        for i, names in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({n: sd[n] for n in names}, path / file, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(names, file))
        total = sum(t.numel() * t.element_size() for t in sd.values())
        with open(path / "model.safetensors.index.json", "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    # ---------------------------------------------------------------------------------------------
    # Sampling

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens, temperature=0.0, top_p=1.0, stop_ids=(),
                 prefix=None, generator=None, pad_id=0):
        """Batched decoding with a KV cache.

        input_ids: a (B, T) tensor or B lists of prompt ids of different lengths (left-padded here).
        prefix: ids forced as the first generated tokens of every row (one list, or one per row),
            e.g. the tag `<|im_start|><think3>\\n` appended after the chat prompt.
        temperature 0 is greedy; otherwise softmax(logits / temperature) restricted to the top-p
        nucleus, drawn with `generator` so a seed reproduces the samples.
        Returns B lists of generated ids (forced prefix included), each ending at its first stop id
        (kept) or after max_new_tokens sampled tokens.
        """
        rows = [list(map(int, r)) for r in (input_ids.tolist() if torch.is_tensor(input_ids) else input_ids)]
        B = len(rows)
        if prefix is None:
            prefix = [[] for _ in rows]
        elif not prefix or isinstance(prefix[0], int):
            prefix = [list(prefix) for _ in rows]
        rows = [r + list(p) for r, p in zip(rows, prefix)]
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
        h = self.hidden_states(ids, positions, mask, cache)
        logits = self.lm_head(h[:, -1])  # (B, V)
        out = [list(p) for p in prefix]
        done = torch.zeros(B, dtype=torch.bool, device=device)
        stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
        pos = positions[:, -1]
        for step in range(max_new_tokens):
            tok = sample(logits, temperature, top_p, generator)  # (B,)
            for i in (~done).nonzero().flatten().tolist():
                out[i].append(int(tok[i]))
            done |= torch.isin(tok, stop)
            if done.all() or step == max_new_tokens - 1:
                break
            valid[:, P + step] = True
            pos = pos + 1
            mask = valid[:, None, None, :P + step + 1] if padded else None  # (B, 1, 1, S)
            h = self.hidden_states(tok[:, None], pos[:, None], mask, cache)
            logits = self.lm_head(h[:, -1])
        return out


def sample(logits, temperature, top_p, generator=None):
    """Next token per row from logits (B, V): argmax at temperature 0, else nucleus sampling."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        # Drop a token once the mass ranked above it already reaches top_p (the first always stays).
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def checkpoint_files(path):
    """The safetensors files of a checkpoint directory: the shards of the index, or the one file."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        with open(index) as f:
            return [path / name for name in sorted(set(json.load(f)["weight_map"].values()))]
    if (path / "model.safetensors").exists():
        return [path / "model.safetensors"]
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once
