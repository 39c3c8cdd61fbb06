"""
One process or many: the ranks of a run, the precision policy, FSDP2, and loading a model onto
the ranks. Shared by the trainers (ssft.py, gfpo.py); checkpoints are in checkpoint.py.

- `setup_world()` reads torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK): NCCL on GPUs, gloo
  on CPUs, where two ranks reproduce one process to ~1e-6 (tested in test_ssft.py). A single
  process on a GPU also gets a (one-rank) process group, so that every GPU run trains the same way.
- `compute_dtype(device)` is the project's one precision decision: bf16 matmuls on GPUs with fp32
  master weights, optimizer state and gradient reduction; fp32 on CPUs. Training applies it through
  FSDP2's MixedPrecisionPolicy (`shard`), evaluation loads weights in it; nothing uses autocast.
- `shard(model, world)`: fully_shard per decoder block, the embedding, and [norm, lm_head] (with
  the embedding when tied: one parameter, one unit), then the root. FSDP's division of gradients
  by the number of ranks is turned off: the trainers divide their summed losses by the loss tokens
  of the global batch, so the gradient sum over ranks is the global mean as written.
  `--cpu-offload` (world.offload) adds FSDP2's CPUOffloadPolicy: the sharded fp32 weights, their
  gradients and AdamW's moments live in host memory (pinned on GPUs), each unit is copied to the
  GPU for its all-gather, and the optimizer steps on the CPU. For the collectives on host tensors
  (the offloaded gradients' norm) a GPU process group has a gloo backend beside NCCL.
- `build_model(...)`: every rank builds the model on the meta device and shards it; rank 0 then
  streams the HF safetensors tensor by tensor (in fp32, the master dtype) and each tensor is
  broadcast and kept as each rank's slice, so no process ever holds the full model.

    torchrun --nproc_per_node=2 ssft.py --model tiny --steps 3      # two gloo ranks on a CPU
    torchrun --nproc_per_node=8 ssft.py --cpu-offload ...          # the fp32 state in host memory
    python bench/bench_load.py                                     # peak memory while loading
"""
import contextlib
import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

import integrity
from model import Config, Qwen2, checkpoint_index, read_tensor

# A rank that waits longer than this in a collective gives up (NCCL's default is 10 minutes; a
# checkpoint of a 32B model, written while the other ranks wait in a barrier, can take longer).
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass
class World:
    """This process's place among the ranks of the run."""
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    group: bool = False  # a process group exists (always when size > 1; on one GPU too)
    offload: bool = False  # --cpu-offload: the sharded fp32 state in host memory (FSDP2's CPUOffloadPolicy)

    @property
    def main(self):
        return self.rank == 0

    def sum(self, x):
        """Sum a float or int over ranks (identity in one process)."""
        if self.size == 1:
            return x
        t = torch.tensor(x, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return type(x)(t.item())

    def gather(self, obj):
        """All ranks' objects, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's object on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self):
        if self.size > 1:
            dist.barrier()

    def close(self):
        if self.group:
            dist.destroy_process_group()


def setup_world():
    size = int(os.environ.get("WORLD_SIZE", 1))
    cuda = torch.cuda.is_available()
    if size == 1 and not cuda:
        return World()
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    # NCCL, and gloo for host tensors: the gradients --cpu-offload keeps there (their norm's all-reduce)
    backend = "cuda:nccl,cpu:gloo" if cuda else "gloo"
    if size == 1:  # `python ssft.py` on a GPU: a one-rank group, so FSDP2 applies the precision policy
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=COLLECTIVE_TIMEOUT, device_id=device)
    else:
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT, device_id=device if cuda else None)
    return World(dist.get_rank(), dist.get_world_size(), device, group=True)


def compute_dtype(device):
    """bf16 on GPUs, fp32 on CPUs (where bf16 is ~75x slower): the one precision decision."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def shard(model, world):
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
    policy = dict(mp_policy=MixedPrecisionPolicy(param_dtype=compute_dtype(world.device), reduce_dtype=torch.float32),
                  # pinned host memory for fast copies; gloo ranks have no accelerator to pin for
                  offload_policy=CPUOffloadPolicy(pin_memory=world.device.type == "cuda") if world.offload
                  else OffloadPolicy())
    for block in model.model.layers:
        fully_shard(block, **policy)
    if not model.config.tie_word_embeddings:
        fully_shard(model.model.embed_tokens, **policy)
    # The head is needed again at the very start of backward: keep it gathered after forward.
    fully_shard(_head(model), **policy, reshard_after_forward=False)
    fully_shard(model, **policy)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # sum over ranks; the loss divides by global tokens
            m.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-scaled sum)


def _head(model):
    """The modules of the head's FSDP unit: the final norm and lm_head (and the tied embedding)."""
    return [model.model.embed_tokens] * model.config.tie_word_embeddings + [model.model.norm, model.lm_head]


def build_model(world, source=None, config=None, verified=False):
    """The model on every rank, from a HF checkpoint directory `source` (its checksums read first,
    unless already `verified`) or, if None, initialised from `config` (seed torch first: the same
    seed gives the same model at any rank count)."""
    if source and not verified:
        integrity.verify(source, world, integrity.MODEL_ADVICE)  # a run's model/ carries checksums: read them all
    if not world.group:  # one CPU process: a plain module in fp32
        return Qwen2.from_pretrained(source) if source else Qwen2(config)
    config = config or Config.from_json(Path(source) / "config.json")
    with torch.device("meta"):
        model = Qwen2(config)
    shard(model, world)
    model.to_empty(device="cpu" if world.offload else world.device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    if source is None:
        # Initialise the full model on rank 0 (a preset is small) and broadcast it.
        full = Qwen2(config).state_dict() if world.main else {}
        set_model_state_dict(model, full, options=options)
    else:
        # Every rank checks the files (headers only) so that a bad checkpoint fails everywhere alike.
        index = checkpoint_index(source, model.checkpoint_tensors().keys())
        # One decoder layer (or one other tensor) per call: rank 0 holds at most that, in fp32. Each
        # call walks the whole model's state, so per-tensor calls would cost O(tensors^2) at 32B.
        groups = {}  # "model.layers.{i}", or a tensor's own name -> the tensors loaded together
        for name in index:
            key = ".".join(name.split(".")[:3]) if name.startswith("model.layers.") else name
            groups.setdefault(key, []).append(name)
        for names in groups.values():
            full = {name: read_tensor(index[name], name).float() for name in names} if world.main else {}
            set_model_state_dict(model, full, options=options)
    model.tie_weights()
    return model


def sync_gradients(model, sync):
    """Whether the next backward reduces gradients over ranks. FSDP2 otherwise accumulates them
    unsharded on each rank, so that micro-batches before the last cost no communication."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)


@contextlib.contextmanager
def gathered(model):
    """Under FSDP2, all-gather every unit once and keep it gathered inside the block (sampling: one
    gather per rollout phase instead of one per decoded token), then shard again. It costs one full
    copy of the weights in the compute dtype per rank (2 bytes per parameter: 65 GB for 32B). A
    plain module is left as it is."""
    from torch.distributed.fsdp import FSDPModule
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        head = {model, *_head(model)}  # gathered after forward (see shard), as the root
        for m in units:
            m.set_reshard_after_forward(m not in head, recurse=False)
            m.reshard()



@torch.no_grad()
def full_weights(model, dtype=None):
    """(HF name, full tensor) of every tensor a checkpoint stores (a tied head is the embedding,
    named once), in `dtype` if given. Under FSDP2 each is all-gathered from its shards when asked
    for, a collective every rank makes in the same order, so at most one full tensor (less than a
    layer) is held beyond the shards: the HF export and a rollout engine's weight sync both stream
    the model this way. A shard is cast before the gather (bf16 moves half of fp32's bytes) and
    gathered on the GPU even when --cpu-offload keeps it in host memory."""
    from torch.distributed.tensor import DTensor
    for name, t in model.checkpoint_tensors().items():
        if isinstance(t, DTensor):
            local = t.to_local().to(t.device_mesh.device_type, dtype or t.dtype)
            t = DTensor.from_local(local, t.device_mesh, t.placements, shape=t.shape, stride=t.stride()).full_tensor()
        yield name, t if dtype is None else t.to(dtype)
