"""
checkpoint.py under real launches: a sharded checkpoint resumes exactly at another rank count
(2 -> 1, 2 -> 2, 1 -> 2), `python checkpoint.py export` gives a directory that transformers loads
with our logits, and a rank killed with SIGKILL ends the whole torchrun job at once.

    python -m pytest -q test_checkpoint.py
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import CPU_ENV, ROOT, TINY_RUN, TORCHRUN, read_metrics
from model import Qwen2

RUN = [*TINY_RUN, "--seed", "1"]


def ssft(*args, ranks=1):
    launcher = TORCHRUN if ranks == 2 else [sys.executable]
    proc = subprocess.run([*launcher, "ssft.py", *map(str, args)], cwd=ROOT, env=CPU_ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def losses(out):
    return read_metrics(out, "loss")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """An uninterrupted one-process run of 6 steps, exported in fp32."""
    out = tmp_path_factory.mktemp("full") / "run"
    ssft(*RUN, "--steps", 6, "--export-dtype", "float32", "--out", out)
    return out


@pytest.fixture(scope="module")
def cut_on_two(tmp_path_factory):
    """The same run cut after 3 steps, on two gloo ranks: each wrote its own shard."""
    out = tmp_path_factory.mktemp("cut2") / "run"
    ssft(*RUN, "--steps", 6, "--stop-after", 3, "--out", out, ranks=2)
    assert len(list((out / "checkpoint").glob("*.distcp"))) == 2
    return out


@pytest.mark.parametrize("ranks", [1, 2])
def test_two_rank_checkpoint_resumes_exactly(full, cut_on_two, ranks, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(cut_on_two, out)
    assert len(losses(out)) == 3
    ssft("--out", out, "--resume", ranks=ranks)
    assert losses(out) == pytest.approx(losses(full), abs=1e-6)


def test_one_process_checkpoint_resumes_on_two_ranks(full, tmp_path):
    out = tmp_path / "run"
    ssft(*RUN, "--steps", 6, "--stop-after", 3, "--out", out)
    assert len(list((out / "checkpoint").glob("*.distcp"))) == 1
    ssft("--out", out, "--resume", ranks=2)
    assert losses(out) == pytest.approx(losses(full), abs=1e-6)


def test_export_command_gives_what_transformers_loads(full, tmp_path):
    """`checkpoint.py export` of the final training checkpoint (read one tensor at a time) equals
    the fp32 export written by the run itself, and transformers computes the same logits."""
    from transformers import Qwen2ForCausalLM
    proc = subprocess.run([sys.executable, "checkpoint.py", "export", str(full / "checkpoint"), str(tmp_path / "hf"),
                           "--dtype", "float32"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    hf = Qwen2ForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ours = Qwen2.from_pretrained(full / "model")
    exported = Qwen2.from_pretrained(tmp_path / "hf")
    for (name, a), (_, b) in zip(ours.state_dict().items(), exported.state_dict().items()):
        assert torch.equal(a, b), name
    ids = torch.randint(0, ours.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=1e-5, atol=1e-5)


def children(pid):
    """Process ids whose parent is `pid` (from /proc: no psutil needed)."""
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def rank_of(pid):
    env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
    return int(env[b"RANK"])


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"  # a zombie is dead
    except OSError:
        return False


@pytest.mark.parametrize("victim", [0, 1])
def test_a_killed_rank_ends_every_process_quickly(victim, tmp_path):
    """SIGKILL one rank mid-run: the other fails in its next collective (gloo sees the closed
    socket), torchrun ends it and exits non-zero, within seconds, leaving no process behind."""
    out = tmp_path / "run"
    proc = subprocess.Popen([*TORCHRUN, "ssft.py", *RUN, "--steps", "1000", "--out", str(out)], cwd=ROOT, env=CPU_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists() or len(losses(out)) < 2:
            assert proc.poll() is None and time.time() < deadline, "the run did not reach step 2"
            time.sleep(0.05)
        workers = sorted(children(proc.pid), key=rank_of)
        assert [rank_of(w) for w in workers] == [0, 1]
        t0 = time.perf_counter()
        os.kill(workers[victim], signal.SIGKILL)
        proc.wait(timeout=30)
        seconds = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        err = proc.stderr.read()
    print(f"rank {victim} killed: torchrun exited {proc.returncode} after {seconds:.2f} s")
    assert proc.returncode != 0
    assert seconds < 5, err[-2000:]
    assert not any(alive(w) for w in workers)
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and alive(int(p.name))
                and str(out).encode() in _cmdline(p)]


def _cmdline(p):
    try:
        return (p / "cmdline").read_bytes()
    except OSError:
        return b""
