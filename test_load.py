"""
Streamed loading (distributed.build_model: rank 0 reads the safetensors one tensor at a time and
each rank keeps its FSDP2 slice) gives on two gloo ranks exactly the weights that transformers
loads from the same checkpoint: tied and untied, one file and sharded with an index, fp32 and bf16.

    python -m pytest -q test_load.py
"""
import gc
import subprocess
import sys

import pytest
import torch

from conftest import CPU_ENV, ROOT, TINY_HF, TORCHRUN


@pytest.mark.parametrize("tied, dtype, shard", [(True, torch.float32, None), (False, torch.bfloat16, "20KB")],
                         ids=["tied-fp32", "untied-bf16-sharded"])
def test_two_ranks_load_what_transformers_loads(tied, dtype, shard, tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(Qwen2Config(**TINY_HF, tie_word_embeddings=tied))
    with torch.no_grad():  # non-zero biases, non-unit norms: every tensor is tested
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    hf.to(dtype).save_pretrained(tmp_path / "hf", **({"max_shard_size": shard} if shard else {}))
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists() == bool(shard)
    proc = subprocess.run([*TORCHRUN, __file__, str(tmp_path / "hf"), str(tmp_path / "loaded.pt")],
                          cwd=ROOT, capture_output=True, text=True, env=CPU_ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = torch.load(tmp_path / "loaded.pt")
    theirs = Qwen2ForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).state_dict()
    assert set(ours) == set(theirs)
    for name, t in theirs.items():
        assert ours[name].dtype == torch.float32  # the master dtype, whatever the file's
        assert torch.equal(ours[name], t), name


if __name__ == "__main__":  # each rank: load with build_model, gather every tensor, rank 0 saves them
    sys.path.insert(0, str(ROOT))
    from distributed import build_model, setup_world
    world = setup_world()
    model = build_model(world, sys.argv[1])
    full = {name: t.full_tensor() for name, t in model.state_dict().items()}  # a collective on every rank
    if world.main:
        torch.save(full, sys.argv[2])
    del model
    gc.collect()  # the FSDP model's cycles, before the process group goes (see test_checkpoint.py)
    world.close()
