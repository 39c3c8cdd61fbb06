"""
The GPU benchmarks' CPU paths: bench/gpu_train.py runs end to end with --smoke, and bench/gpu.sh
stops at once with a clear message where there is no CUDA GPU. (What needs a GPU runs in bench/gpu.sh.)

    python -m pytest -q test_bench.py
"""
import json
import subprocess
import sys

import pytest
import torch

from conftest import CPU_ENV as ENV
from conftest import ROOT


def test_gpu_train_smoke_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "bench/gpu_train.py", "--device", "cpu", "--smoke",
                           "--out", str(tmp_path / "train.json")],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (result,) = json.loads((tmp_path / "train.json").read_text())
    assert result["tokens_per_second"] > 0 and result["flops_per_token"] > 0
    assert result["last_loss"] < result["first_loss"]  # it trains


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_gpu_script_fails_clearly_without_cuda(tmp_path):
    proc = subprocess.run(["bash", "bench/gpu.sh"], cwd=ROOT, env={**ENV, "OUT": str(tmp_path)}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert "no CUDA GPU" in proc.stderr and "===" not in proc.stdout  # no check ran
