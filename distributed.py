"""
One process or many: torchrun with FSDP2, model loading by broadcast from rank 0, and atomic
checkpoints. Shared by the trainers (ssft.py; gfpo.py to come).

- `setup_dist()` reads torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK): NCCL on GPUs, gloo on
  CPU, where two ranks reproduce one process to ~1e-6 (tested in test_ssft.py).
- `shard(model)`: fully_shard per decoder block, the embedding, and [norm, lm_head] (with the
  embedding when tied: one parameter, one unit), then the root; bf16 compute, fp32 reduction.
- `build_model(...)`: rank 0 reads the HF checkpoint (or initialises a preset); the others build
  on the meta device and receive their shards from rank 0 (set_model_state_dict with
  broadcast_from_rank0), so only rank 0 ever holds the full weights.
- `save_checkpoint(...)`: out/checkpoint is a HF model directory (loadable by transformers and
  vLLM) plus tokenizer.json and trainer_state.pt, written as out/checkpoint.tmp and swapped in by
  renames, so a crash never leaves a half-written checkpoint.

    torchrun --nproc_per_node=2 ssft.py --model tiny --steps 3      # two gloo ranks on a CPU
"""
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from model import Config, Qwen2


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self):
        return self.rank == 0

    def sum(self, x):
        """Sum a float or int over ranks (identity in one process)."""
        if self.world == 1:
            return x
        t = torch.tensor(x, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return type(x)(t.item())

    def gather(self, obj):
        """All ranks' objects, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.world > 1:
            dist.barrier()


def setup_dist():
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def shard(model, d):
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if d.device.type == "cuda" else MixedPrecisionPolicy()
    for block in model.model.layers:
        fully_shard(block, mp_policy=mp)
    head = [model.model.norm, model.lm_head]
    if model.config.tie_word_embeddings:
        head.insert(0, model.model.embed_tokens)
    else:
        fully_shard(model.model.embed_tokens, mp_policy=mp)
    # The head is needed again at the very start of backward: keep it gathered after forward.
    fully_shard(head, mp_policy=mp, reshard_after_forward=False)
    fully_shard(model, mp_policy=mp)


def build_model(d, source, config):
    """The model on every rank, from a HF checkpoint directory `source` or, if None, initialised
    from `config` (seed torch first: the same seed gives the same model at any rank count)."""
    if d.main or d.world == 1:
        model = Qwen2.from_pretrained(source) if source else Qwen2(config)
    else:
        with torch.device("meta"):
            model = Qwen2(config or Config.from_json(Path(source) / "config.json"))
    if d.world == 1:
        return model.to(d.device)
    full = model.state_dict() if d.main else {}
    with torch.device("meta"):
        sharded = Qwen2(model.config)
    shard(sharded, d)
    sharded.to_empty(device=d.device)
    set_model_state_dict(sharded, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    sharded.tie_weights()
    return sharded


def save_checkpoint(out, model, opt, tok, state, d):
    """Gather the full model and optimizer states on rank 0 and write out/checkpoint atomically;
    `state` (step, config, ...) goes into trainer_state.pt beside the optimizer."""
    model_sd, opt_sd = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if d.main:
        tmp, final, old = out / "checkpoint.tmp", out / "checkpoint", out / "checkpoint.old"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, state_dict=model_sd)
        tok.save(str(tmp / "tokenizer.json"))
        torch.save({**state, "optimizer": opt_sd}, tmp / "trainer_state.pt")
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    d.barrier()


def load_optimizer(model, opt, opt_sd):
    set_optimizer_state_dict(model, opt, opt_sd, options=StateDictOptions(full_state_dict=True))


def find_checkpoint(out):
    """The newest complete checkpoint: checkpoint/, or checkpoint.old if a swap was interrupted."""
    for name in ("checkpoint", "checkpoint.old"):
        if (out / name / "trainer_state.pt").exists():
            return out / name
    return None
