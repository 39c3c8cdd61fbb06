"""
Per-GPU memory plan of an ssft.py run under FSDP2, from a meta-device model (nothing allocated).

    python ssft.py --plan --model qwen2.5-32b --world-size 8 --max-len 16384
    python ssft.py --plan --model path/to/checkpoint --world-size 4

Counted (bytes per parameter, sharded over the ranks): fp32 master weights 4, fp32 gradients 4,
AdamW's two fp32 moments 8, i.e. the 16 B/param of SPEC §10; plus the bf16 copies FSDP gathers
(the block running and the one prefetched), the activations of one micro-batch of
max(--micro-tokens, --max-len) tokens, and one tile of the fused loss. The activation figure is an
estimate: per layer and token, bf16 tensors saved for backward by the norms, the q/k/v/o
projections and SDPA (no T x T matrix), and the SwiGLU MLP, about 2(6d + 2 kv_dim + 4 ffn) bytes,
plus the norms' fp32 inputs (16d bytes). Activation checkpointing keeps only each block's bf16
input and recomputes one block at a time. Allocator fragmentation, NCCL buffers and the CUDA
context (a few GB) come on top.
"""
from pathlib import Path

import torch

from model import Config, Qwen2, count_parameters

GB = 1e9


def estimate(config, world, tokens):
    with torch.device("meta"):
        model = Qwen2(config)
    P = count_parameters(model)
    block = count_parameters(model.model.layers[0])
    d, ffn, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * config.head_dim
    per_layer_token = 2 * (6 * d + 2 * kv + 4 * ffn) + 16 * d
    embed = config.vocab_size * d
    return P, {
        "fp32 weights (sharded)": 4 * P / world,
        "fp32 gradients (sharded)": 4 * P / world,
        "AdamW moments (sharded)": 8 * P / world,
        "bf16 gathered: 2 blocks + embedding/head": 2 * (2 * block + embed * (1 if config.tie_word_embeddings else 2)),
        "activations, no checkpointing": L * tokens * per_layer_token,
        "activations, with checkpointing": L * tokens * 2 * d + tokens * per_layer_token,
        "fused loss tile (4096 x 16384)": 4096 * 16384 * (2 + 3 * 4),
    }


def print_plan(cfg):
    path = Path(cfg.model)
    config = Config.from_json(path / "config.json") if path.is_dir() else Config.preset(cfg.model)
    tokens = max(cfg.micro_tokens, cfg.max_len)
    P, parts = estimate(config, cfg.world_size, tokens)
    print(f"{cfg.model}: {P / 1e9:.2f}B parameters, {cfg.world_size} GPUs, {tokens} tokens per micro-batch")
    for name, size in parts.items():
        print(f"  {name:<44} {size / GB:8.1f} GB")
    fixed = sum(v for k, v in parts.items() if not k.startswith("activations"))
    for ac in ("no checkpointing", "with checkpointing"):
        print(f"  {'total, ' + ac:<44} {(fixed + parts['activations, ' + ac]) / GB:8.1f} GB")
