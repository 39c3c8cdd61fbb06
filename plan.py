"""
Per-GPU memory plan of an ssft.py or gfpo.py run under FSDP2, from a meta-device model (nothing is
allocated, so it runs anywhere), and the options a run needs to fit.

    python ssft.py --plan --model qwen2.5-32b --world-size 8 --max-len 16384
    python plan.py --model qwen2.5-32b --world-size 8 --gfpo --batch 256 --group 8 --max-new 16384
    python plan.py --gfpo --vllm-tp 2 --cpu-offload --activation-checkpointing   # ... on vLLM, offloaded
    python plan.py --table            # the README tables: 0.5B ... 72B on 8 x 80 / 141 / 192 GB
    python -m pytest -q test_plan.py  # the estimate against the measured peaks of CPU runs

Per rank, for P parameters on W ranks and b bytes per element of the compute dtype
(distributed.compute_dtype: bf16 on GPUs, fp32 on CPUs):
- state, sharded: fp32 weights 4P/W, fp32 gradients 4P/W, AdamW's two moments 8P/W (16 bytes a
  parameter over the ranks); while the optimizer steps, foreach AdamW's temporary of 4P/W;
- activations of a micro-batch of T = max(--micro-tokens, --max-len) tokens. What autograd saves
  per layer and token (exact, test_plan.py counts it): each RMSNorm its fp32 input and two b-byte
  tensors; q and k after RoPE, v, SDPA's output and the o_proj input (SDPA keeps no T x T matrix)
  and its fp32 log-sum-exp; the SwiGLU MLP four ffn-wide tensors. With activation checkpointing
  only each block's input (b d per layer) is kept, and one block at a time is recomputed;
- backward peaks either at the loss, holding FSDP's gathered head and one block, two tiles of logits
  (kernels.chunked.default_tile: one constant for both), dh and dW blocks in fp32 and the head's
  gradient; or in a block, holding two gathered blocks and their unsharded gradients (plus an
  fp32 copy for the reduce on GPUs; a tied head stays gathered with its gradient), the
  activations' gradients, and the recomputed block;
- gfpo.py's rollouts (distributed.gathered): the whole model in the compute dtype, bP, beside the
  fp32 weights and moments (gradients are freed by then); the KV cache of the rows decoded at once,
  layers x rows x (prompt + max_new) x 2 x kv_heads x head_dim x b (model.KVCache); the prefill's
  and sampler's temporaries. With --beta the reference model adds 4P/W (not counted). With
  --rollouts vllm (vllm_engine.py) an engine of TP GPUs holds bP/TP on each of them instead of the
  gathered model, and its paged KV cache the rows in flight; it sleeps (holds nothing) while
  training steps, and may use what the rollout phase leaves (its --vllm-memory default).
The peak is the largest phase. The CUDA context, NCCL buffers and allocator fragmentation are not
estimated: RESERVE stays free. If a run does not fit, the options in order: activation
checkpointing; CPU offload of the sharded fp32 state and the optimizer step (--cpu-offload:
FSDP2's CPUOffloadPolicy in distributed.shard; 16P/W bytes of pinned host memory per rank, 16P per
node of 8 GPUs); more GPUs. `--plan` prints every option, and the peak of the run's own flags.
Memory sizes are decimal GB, below what the cards report (80 GB H100: 85.9e9 bytes).
"""
import argparse

import torch

from distributed import compute_dtype
from kernels.chunked import default_tile
from model import PRESETS, Config, Qwen2, count_parameters
from flags import model_dir

GB = 1e9
RESERVE = 6e9  # kept free on each GPU: CUDA context (~1 GB), NCCL buffers, allocator fragmentation
GPUS = {"8 x 80 GB (H100)": 80e9, "8 x 141 GB (H200)": 141e9, "8 x 192 GB (B200)": 192e9}
STATE = ("fp32 weights", "fp32 gradients", "AdamW moments")
ACTIVATIONS = ("activations, no checkpointing", "activations, with checkpointing")
TOP = "of which final norm and loss inputs"
LOSS = "backward of the loss: gathered head + block, tiles, dh, dW, head gradient"
BLOCK = "backward of a block: gathered blocks, gradients"
RECOMPUTE = "checkpointing: one block recomputed"
OPTIONS = ((False, False, "none"), (True, False, "activation checkpointing"),
           (True, True, "activation checkpointing + CPU offload"))


def sizes(config, _cache={}):
    """Parameters of the whole model, of one decoder block, and of the head (lm_head)."""
    if repr(config) not in _cache:
        with torch.device("meta"):
            model = Qwen2(config)
        _cache[repr(config)] = (count_parameters(model), count_parameters(model.model.layers[0]),
                                config.vocab_size * config.hidden_size)
    return _cache[repr(config)]


def activations_per_token(config, b):
    """Bytes saved for backward per token: (one decoder layer, the final norm and loss inputs)."""
    d, kv, H = config.hidden_size, config.num_key_value_heads * config.head_dim, config.num_attention_heads
    layer = 2 * ((4 + 2 * b) * d + 4) + b * (2 * d + 2 * kv) + 4 * H + 4 * b * config.intermediate_size
    return layer, (4 + 3 * b) * d + 24  # final norm, the hidden states the loss reads, targets, lse


def loss_bytes(config, tokens, device):
    """The fused loss's backward: two tiles of logits (the next tile is computed while the previous
    one's gradient is still referenced), dh (T x d) and two dW blocks in fp32."""
    chunk, vocab_chunk = default_tile(torch.device(device))
    vocab_chunk = min(vocab_chunk, config.vocab_size)
    return 2 * _bytes(device) * min(chunk, tokens) * vocab_chunk + 4 * config.hidden_size * (tokens + 2 * vocab_chunk)


def _bytes(device):
    return torch.finfo(compute_dtype(torch.device(device))).bits // 8


def estimate(config, world, tokens, device="cuda", rows=0, prompt=0, max_new=0, tp=0):
    """{part: bytes per rank} for micro-batches of `tokens` tokens; rows > 0 adds gfpo.py's rollout
    terms for `rows` sequences a rank of prompt + max_new tokens decoded at once, by the local engine
    or (tp > 0) by vLLM engines of tp GPUs."""
    P, block, head = sizes(config)
    b, d, L, ffn = _bytes(device), config.hidden_size, config.num_hidden_layers, config.intermediate_size
    layer, top = activations_per_token(config, b)
    fsdp = world > 1 or torch.device(device).type == "cuda"  # one CPU process trains a plain module
    grad = b + (4 if b != 4 and fsdp else 0)  # an unsharded gradient and its fp32 copy for the reduce
    held = 2 * (b + grad) * block + config.tie_word_embeddings * 2 * b * head if fsdp else b * block
    parts = {"fp32 weights": 4 * P / world, "fp32 gradients": 4 * P / world, "AdamW moments": 8 * P / world,
             "optimizer step temporary": 4 * P / world,
             ACTIVATIONS[0]: tokens * (L * layer + top), ACTIVATIONS[1]: tokens * (L * b * d + top), TOP: tokens * top,
             LOSS: fsdp * b * (head + block) + loss_bytes(config, tokens, device) + grad * head,
             BLOCK: held + tokens * b * (d + 2 * ffn), RECOMPUTE: tokens * layer}
    if rows:
        kv = config.num_key_value_heads * config.head_dim
        parts["rollouts: vLLM engine weights, 1/TP" if tp else "rollouts: whole model gathered"] = b * P / max(tp, 1)
        parts["rollouts: KV cache"] = L * rows * (prompt + max_new) * 2 * kv * b
        # the prefill's temporaries (3 ffn- and 4 d-wide at once), the sampler's (rows, V) fp32 ones
        parts["rollouts: prefill and sampling"] = rows * (b * prompt * (3 * ffn + 4 * d) + 5 * 4 * config.vocab_size)
    return parts


def phases(parts, checkpointing=True, offload=False):
    """Bytes per rank of each phase. offload: the fp32 state lives in host memory."""
    state = 0 if offload else sum(parts[k] for k in STATE)
    layers = parts[ACTIVATIONS[checkpointing]] - parts[TOP]
    block = parts[BLOCK] + checkpointing * parts[RECOMPUTE]
    rollouts = sum(v for k, v in parts.items() if k.startswith("rollouts"))
    return {"forward + backward": state + layers + max(parts[TOP] + parts[LOSS], block),
            "optimizer step": 0 if offload else state + parts["optimizer step temporary"],
            "rollouts": rollouts and rollouts + (0 if offload else state - parts["fp32 gradients"])}


def peak(parts, checkpointing=True, offload=False):
    return max(phases(parts, checkpointing, offload).values())


def options(config, world, memory, tokens, **rollouts):
    """(the first option that fits `memory` bytes per GPU, its peak), or (None, the peak with all)."""
    parts = estimate(config, world, tokens, **rollouts)
    for checkpointing, offload, name in OPTIONS:
        if (p := peak(parts, checkpointing, offload)) <= memory - RESERVE:
            return name, p
    return None, p


def fewest_gpus(config, memory, tokens):
    """The fewest GPUs (a multiple of 8) on which activation checkpointing alone fits."""
    return next(n for n in range(8, 4097, 8) if peak(estimate(config, n, tokens)) <= memory - RESERVE)


def rollout_rows(config, world, memory, prompt, max_new, offload=False, tp=0):
    """How many rollouts a GPU can hold in flight on `memory` bytes (0: none): gfpo.py's local
    engine, or (tp > 0) vLLM engines of tp GPUs."""
    one = estimate(config, world, 1, rows=1, prompt=prompt, max_new=max_new, tp=tp)
    per_row = one["rollouts: KV cache"] + one["rollouts: prefill and sampling"]
    return max(0, int((memory - RESERVE - phases(one, offload=offload)["rollouts"] + per_row) // per_row))


def print_plan(cfg):
    """The plan for a run's flags: ssft.py's; gfpo.py's `group`, `batch`, `max_new`, `sample_batch` if present."""
    path = model_dir(cfg.model)
    config = Config.from_json(path / "config.json") if path.is_dir() else Config.preset(cfg.model)
    tokens, world = max(cfg.micro_tokens, cfg.max_len), cfg.world_size
    rows = min(cfg.sample_batch, cfg.batch // world * cfg.group) if getattr(cfg, "group", 0) else 0
    tp = cfg.vllm_tp if getattr(cfg, "rollouts", "local") == "vllm" else 0
    # gfpo.py's --max-new 0 means 4096 for math and code prompts (gfpo.RL_MAX_NEW); prompts of ~512 tokens
    rollouts = dict(rows=rows, prompt=getattr(cfg, "prompt_len", 512), max_new=getattr(cfg, "max_new", 0) or 4096,
                    tp=tp)
    parts = estimate(config, world, tokens, **rollouts)
    print(f"{cfg.model}: {sizes(config)[0] / 1e9:.2f}B parameters, {world} GPUs, {tokens} tokens per micro-batch"
          + (", {rows} rollouts of {prompt} + {max_new} tokens in flight a GPU".format(**rollouts) if rows else "")
          + (f" (vLLM, TP {tp})" if rows and tp else ""))
    for name, size in parts.items():
        print(f"  {name:<72} {size / GB:7.1f} GB")
    for checkpointing, offload, name in OPTIONS:
        print(f"  {'peak, options: ' + name:<72} {peak(parts, checkpointing, offload) / GB:7.1f} GB")
    own = peak(parts, cfg.activation_checkpointing, cfg.cpu_offload)
    print(f"  {'peak, this run (--activation-checkpointing, --cpu-offload as given)':<72} {own / GB:7.1f} GB")
    print(f"  (plus {RESERVE / GB:.0f} GB kept free for the CUDA context, NCCL buffers and fragmentation)")
    for gpus, memory in GPUS.items():
        name, p = options(config, world, memory, tokens, **rollouts)
        print(f"  {world} x {memory / GB:.0f} GB: " + (f"fits with options: {name} ({p / GB:.0f} GB)" if name
                                                      else f"does not fit ({p / GB:.0f} GB with every option)"))
        if rows:
            fit = [rollout_rows(config, world, memory, rollouts["prompt"], rollouts["max_new"], o, tp) for o in (0, 1)]
            print(f"    rollouts that fit at once (--sample-batch {rows}): {fit[0]}, {fit[1]} with CPU offload")


def table(tokens=16384, prompt=512, max_new=16384):
    """The README tables (markdown): the options ssft.py needs and its per-GPU peak, and how many
    gfpo.py rollouts of prompt + max_new tokens fit at once, for each model and machine."""
    short = {"none": "fits as is", OPTIONS[1][2]: "AC", OPTIONS[2][2]: "AC + offload"}
    ssft = [f"| model | params | state / GPU | {' | '.join(GPUS)} |", "|---" * (3 + len(GPUS)) + "|"]
    gfpo = [f"| model | {' | '.join(GPUS)} |", "|---" * (1 + len(GPUS)) + "|"]
    for name in [k for k in PRESETS if k.startswith("qwen2.5-")]:
        config = Config.preset(name)
        P, cells, rows = sizes(config)[0], [], []
        for memory in GPUS.values():
            option, p = options(config, 8, memory, tokens)
            offload = option in (None, OPTIONS[2][2])
            more = f", or AC on {fewest_gpus(config, memory, tokens)}" if offload else ""
            cells.append(f"{short[option]}: {p / GB:.0f} GB{more}" if option else f"no ({p / GB:.0f} GB){more}")
            rows.append(" / ".join(str(rollout_rows(config, 8, memory, prompt, max_new, o)) for o in (False, True)))
        ssft.append(f"| {name} | {P / 1e9:.1f}B | {16 * P / 8 / GB:.0f} GB | " + " | ".join(cells) + " |")
        gfpo.append(f"| {name} | " + " | ".join(rows) + " |")
    return "\n".join(ssft + [""] + gfpo)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", action="store_true", help="print the README tables and exit")
    p.add_argument("--model", default="qwen2.5-32b", help="a preset or a HF checkpoint directory")
    p.add_argument("--world-size", type=int, default=8)
    p.add_argument("--max-len", type=int, default=16384)
    p.add_argument("--micro-tokens", type=int, default=4096)
    p.add_argument("--gfpo", action="store_true", help="add gfpo.py's rollouts (--batch, --group, --max-new)")
    p.add_argument("--batch", type=int, default=256, help="gfpo.py prompts per step, all ranks")
    p.add_argument("--group", type=int, default=8, help="gfpo.py rollouts per prompt")
    p.add_argument("--sample-batch", type=int, default=256, help="gfpo.py rollouts decoded at once")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--max-new", type=int, default=16384)
    p.add_argument("--vllm-tp", type=int, default=0, help="gfpo.py's rollouts on vLLM engines of this TP (0: local)")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--cpu-offload", action="store_true")
    a = p.parse_args()
    a.group, a.rollouts = a.group if a.gfpo else 0, "vllm" if a.vllm_tp else "local"
    print(table(a.max_len, a.prompt_len, a.max_new)) if a.table else print_plan(a)
