"""pytest's set-up, and the helpers that the tests (and the memory benchmarks) share.

Triton kernels run on CPU tensors only through the interpreter, and TRITON_INTERPRET must be set
before the module that defines the kernels is imported, so it is set when pytest starts, before it
collects the test files (`pytest_configure`). Importing this file does nothing else: bench/ scripts
import its helpers without its settings.
"""
import ctypes
import gc
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# A tiny Qwen2 in Hugging Face's config names (transformers.Qwen2Config(**TINY_HF), our Config(**TINY_HF)).
TINY_HF = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2)
# A tiny SSFT run of the synthetic task: about a second a step on a CPU.
TINY_RUN = ["--model", "tiny", "--train-questions", "48", "--eval-questions", "0", "--batch", "8"]
# What the tests launch: on the CPU (a GPU machine too: the gloo path), one OpenMP thread per
# process (no waits on a busy machine); two ranks on a free port each time.
CPU_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def pytest_configure(config):
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


def ssft_cli(args, **kw):
    """`python ssft.py ARGS` in a subprocess, its output captured."""
    return subprocess.run([sys.executable, "ssft.py", *args], cwd=ROOT, capture_output=True, text=True, **kw)


def one_line_error(proc, message):
    """A completed process that refused the user's input: a non-zero exit, no traceback, and one
    line on stderr, `error: ...`, that holds `message`."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def read_metrics(out, key=None):
    """The records of a run's metrics.jsonl (or the value of `key` in each)."""
    from run import read_metrics
    records = read_metrics(Path(out) / "metrics.jsonl")
    return [r[key] for r in records] if key else records


def rss(key="VmRSS"):
    """This process's resident memory now (VmRSS) or at its peak since the last reset (VmHWM), bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def peak_rss(fn):
    """(fn's result, its peak resident memory above the resident memory before it, that memory before),
    in bytes. Freed objects (FSDP leaves reference cycles) and heap pages go back to the system
    first: reused without a page fault, they would hide part of fn's peak."""
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    before = rss()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    out = fn()
    return out, rss("VmHWM") - before, before
