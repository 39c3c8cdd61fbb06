"""
Host memory while loading a sharded checkpoint, and the cost of a training checkpoint, on CPU.

1. Writes a random Qwen2-shaped checkpoint of about 240M parameters (hidden 1024, 12 layers,
   vocabulary 51,200, untied), sharded in bf16 as transformers does (model.save_pretrained).
2. Loads it on two gloo ranks (torchrun, distributed.build_model: rank 0 streams the safetensors
   one tensor at a time, every rank keeps its FSDP2 slice in fp32) and in one process
   (Qwen2.from_pretrained, fp32). For every process: the peak resident memory while loading,
   above the resident memory just before (VmHWM after resetting it; also ru_maxrss, which
   counts from the process's start), against the model's size in fp32 and in bf16.
3. On the two ranks, after one AdamW step (so that the optimizer state exists), times
   checkpoint.save and reports each rank's shard of the DCP checkpoint in MB; then what the
   checksums cost: the CRC-32 of the shard a rank just wrote (part of the save) and
   checkpoint.verify of the whole checkpoint (what a resume or an export reads first).

    python bench/bench_load.py [--json bench/out/cpu_load.json] [--keep DIR]
"""
import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from conftest import peak_rss, rss  # noqa: E402
from model import Config, Qwen2, count_parameters  # noqa: E402

CONFIG = dict(vocab_size=51200, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16,
              num_key_value_heads=4, tie_word_embeddings=False)
MB = 1e6


class _Tokenizer:  # checkpoint.save writes the run's tokenizer beside the shards; any will do here
    def save(self, path):
        Path(path).write_text("{}")


def loaded(fn):
    """fn() with the peak resident memory above the resident memory just before it."""
    out, peak, before = peak_rss(fn)
    return out, {"peak_above_before_MB": peak / MB,
                 "ru_maxrss_minus_before_MB": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before) / MB,
                 "resident_after_MB": (rss() - before) / MB}


def worker(mode, path, out):
    """One process of the measurement (a rank of torchrun, or the one process): writes out/<mode><rank>.json."""
    Path(out).mkdir(parents=True, exist_ok=True)
    if mode == "single":
        _, mem = loaded(lambda: Qwen2.from_pretrained(path))
        (Path(out) / "single.json").write_text(json.dumps({"process": "one process (Qwen2.from_pretrained)", **mem}))
        return
    import checkpoint
    from distributed import build_model, setup_world
    from run import adamw
    world = setup_world()
    model, mem = loaded(lambda: build_model(world, path))
    result = {"process": f"rank {world.rank} of {world.size} (distributed.build_model)", **mem}
    opt = adamw(model, 1e-5, 0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # the AdamW moments now exist, as in any checkpoint after step 1
    world.barrier()
    t = time.perf_counter()
    checkpoint.save(out, model, opt, _Tokenizer(), {"step": 1}, world)
    result["checkpoint_save_seconds"] = time.perf_counter() - t
    shard = f"__{world.rank}_0.distcp"
    result["checkpoint_shard_MB"] = (Path(out) / "checkpoint" / shard).stat().st_size / MB
    t = time.perf_counter()  # what the save spends on its checksum: the shard just written, read back
    checkpoint.checksums(Path(out) / "checkpoint", [shard])
    result["checksum_seconds"] = time.perf_counter() - t
    world.barrier()
    t = time.perf_counter()  # what a resume spends before loading: every file, the ranks sharing them
    checkpoint.verify(Path(out) / "checkpoint", world)
    result["verify_seconds"] = time.perf_counter() - t
    (Path(out) / f"rank{world.rank}.json").write_text(json.dumps(result))
    del model, opt
    gc.collect()  # FSDP's reference cycles go before the process group (else an abort at exit, at times)
    world.close()


def run(command, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}  # RSS follows the tensors
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return [json.loads(f.read_text()) for f in sorted(Path(out).glob("*.json"))]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    p.add_argument("--keep", help="write the checkpoints here (default: a temporary directory, deleted)")
    a = p.parse_args()
    work = Path(a.keep or tempfile.mkdtemp(prefix="bench_load."))
    try:
        torch.manual_seed(0)
        model = Qwen2(Config(**CONFIG))
        P = count_parameters(model)
        model.save_pretrained(work / "hf", dtype=torch.bfloat16, max_shard_bytes=100 * 2**20)
        del model
        shards = len(list((work / "hf").glob("*.safetensors")))
        me = [sys.executable, str(Path(__file__).resolve())]
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        results = run([*torchrun, *me[1:], "ranks", str(work / "hf"), str(work / "ranks")], work / "ranks")
        results += run([*me, "single", str(work / "hf"), str(work / "single")], work / "single")
        sizes = {"parameters": P, "fp32_MB": 4 * P / MB, "bf16_MB": 2 * P / MB, "safetensors_shards": shards}
        print(f"{P / 1e6:.0f}M parameters: {sizes['fp32_MB']:.0f} MB in fp32, {sizes['bf16_MB']:.0f} MB in bf16; "
              f"checkpoint in {shards} bf16 safetensors shards")
        for r in sorted(results, key=lambda r: r["process"]):
            peak = r["peak_above_before_MB"]
            print(f"  {r['process']:<40} peak {peak:6.0f} MB above before loading = "
                  f"{peak / sizes['fp32_MB']:.2f} x fp32 model, {peak / sizes['bf16_MB']:.2f} x bf16 (ru_maxrss - "
                  f"before: {r['ru_maxrss_minus_before_MB']:.0f} MB; resident after: {r['resident_after_MB']:.0f} MB)")
        for r in results:
            if "checkpoint_save_seconds" in r:
                print(f"  {r['process']:<40} checkpoint.save {r['checkpoint_save_seconds']:.2f} s, "
                      f"its shard {r['checkpoint_shard_MB']:.0f} MB (model + AdamW, fp32: 12 B/param / 2 ranks = "
                      f"{12 * P / 2 / MB:.0f} MB); of the save, its CRC-32 {r['checksum_seconds']:.2f} s = "
                      f"{r['checksum_seconds'] / r['checkpoint_shard_MB'] * 1000:.2f} s/GB; verifying the checkpoint "
                      f"before a resume {r['verify_seconds']:.2f} s")
        if a.json:
            Path(a.json).write_text(json.dumps({"model": sizes, "processes": results}, indent=2))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("ranks", "single"):
        worker(*sys.argv[1:4])
    else:
        main()
