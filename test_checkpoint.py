"""
checkpoint.py under real launches: a sharded checkpoint resumes exactly at another rank count
(2 -> 1, 2 -> 2, 1 -> 2), `python checkpoint.py export` gives a directory that transformers loads
with our logits, and a rank killed with SIGKILL ends the whole torchrun job at once. Damage to any
file of a checkpoint (a flipped byte, a cut, a deletion) or of a run's model directory is refused,
in one line naming the file, by whatever would use it, and nothing on disk changes; two runs
started at once on one directory (one process each, or two torchrun jobs) leave one running; a
holder killed with SIGKILL leaves the directory to the next run.

    python -m pytest -q test_checkpoint.py
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

import checkpoint
from conftest import CPU_ENV, ROOT, TINY_RUN, TORCHRUN, one_line_error, read_metrics
from model import Qwen2

RUN = [*TINY_RUN, "--seed", "1"]


def ssft(*args, ranks=1):
    launcher = TORCHRUN if ranks == 2 else [sys.executable]
    proc = subprocess.run([*launcher, "ssft.py", *map(str, args)], cwd=ROOT, env=CPU_ENV, capture_output=True,
                          text=True)
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


@pytest.fixture(scope="module")
def cut_on_one(tmp_path_factory):
    """The run cut after 3 steps in one process: its checkpoint, its model directory after step 6
    is the full run's."""
    out = tmp_path_factory.mktemp("cut1") / "run"
    ssft(*RUN, "--steps", 6, "--stop-after", 3, "--out", out)
    return out


def snapshot(folder):
    """Every file below folder with its size and CRC-32: what 'nothing changed' compares. (.lock,
    which names the last process to hold the directory, is the lock's bookkeeping, not the run's.)"""
    return {str(p.relative_to(folder)): (p.stat().st_size, zlib.crc32(p.read_bytes()))
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and p.name != ".lock"}


def flip(path, at=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


DAMAGE = {  # name: (what is done to the checkpoint, the file the refusal names, what it says)
    "a flipped byte in a shard": (lambda c: flip(c / "__0_0.distcp"), "__0_0.distcp", "CRC-32 mismatch"),
    "a flipped byte in the trainer state": (lambda c: flip(c / "trainer_state.json", 0.02), "trainer_state.json",
                                            "changed"),
    "a truncated shard": (lambda c: os.truncate(c / "__0_0.distcp", 1000), "__0_0.distcp", "cut short"),
    "a truncated .metadata": (lambda c: os.truncate(c / ".metadata", 10), ".metadata", "cut short"),
    "a missing shard": (lambda c: (c / "__0_0.distcp").unlink(), "__0_0.distcp", "missing"),
    "a missing tokenizer": (lambda c: (c / "tokenizer.json").unlink(), "tokenizer.json", "missing"),
    "missing checksums": (lambda c: (c / "checksums.json").unlink(), "checksums.json", "missing"),
    "unreadable checksums": (lambda c: flip(c / "checksums.json", 0.0), "checksums.json", "not readable"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_checkpoint_is_refused_and_nothing_changes(kind, cut_on_one, tmp_path):
    damage, name, says = DAMAGE[kind]
    out = tmp_path / "run"
    shutil.copytree(cut_on_one, out)
    damage(out / "checkpoint")
    before = snapshot(out)
    for command in (["ssft.py", "--out", out, "--resume"],
                    ["checkpoint.py", "export", out / "checkpoint", tmp_path / "hf"]):
        proc = subprocess.run([sys.executable, *map(str, command)], cwd=ROOT, env=CPU_ENV, capture_output=True,
                              text=True)
        one_line_error(proc, f"{out / 'checkpoint' / name}: ")
        assert says in proc.stderr and ("restore" in proc.stderr), proc.stderr
        assert snapshot(out) == before and not (tmp_path / "hf").exists()


def test_a_checkpoint_from_before_checksums_resumes_with_a_warning(full, cut_on_one, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(cut_on_one, out)
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    del state["checksums"]
    (out / "checkpoint" / "trainer_state.json").write_text(json.dumps(state))
    (out / "checkpoint" / "checksums.json").unlink()
    proc = subprocess.run([sys.executable, "ssft.py", "--out", str(out), "--resume"], cwd=ROOT, env=CPU_ENV,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "written before checkpoints carried checksums" in proc.stderr, proc.stderr
    assert losses(out) == losses(full)


def test_a_damaged_model_directory_is_refused_by_evaluation_and_rl(full, tmp_path):
    model = tmp_path / "run" / "model"
    shutil.copytree(full / "model", model)
    assert (model / "checksums.json").is_file()  # the run's export carries its checksums
    flip(model / "model.safetensors")
    for command in (["eval.py", "--model", model.parent, "--train-questions", "48", "--questions", "2"],
                    ["gfpo.py", "--model", model.parent, "--out", tmp_path / "rl", "--steps", "1", "--batch", "2",
                     "--train-questions", "48", "--eval-questions", "0"]):
        proc = subprocess.run([sys.executable, *map(str, command)], cwd=ROOT, env=CPU_ENV, capture_output=True,
                              text=True)
        one_line_error(proc, f"{model / 'model.safetensors'}: its bytes changed since they were written")
        assert "export it again from its checkpoint" in proc.stderr
    assert not (tmp_path / "rl").exists()


@pytest.mark.parametrize("launcher", ["python", "torchrun"])
def test_two_runs_started_at_once_on_one_directory_one_runs(launcher, tmp_path):
    out = tmp_path / "run"
    command = [*(TORCHRUN if launcher == "torchrun" else [sys.executable]), "ssft.py", *RUN, "--steps", "4",
               "--out", str(out)]
    procs = [subprocess.Popen(command, cwd=ROOT, env=CPU_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    refused = next(err for code, err in results if code)
    assert f"error: {out} is in use by another run (pid " in refused or \
        f"error: {out}: another run started there at the same time" in refused, refused
    assert losses(out) and len(losses(out)) == 4  # the run that ran is whole


def test_a_run_killed_with_sigkill_leaves_the_directory_to_the_next(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "ssft.py", *RUN, "--steps", "1000", "--save-every", "1",
                             "--out", str(out)], cwd=ROOT, env=CPU_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint" / "checksums.json").exists():
            assert proc.poll() is None and time.time() < deadline, "the run did not save"
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "ssft.py", "--out", str(out), "--resume"], cwd=ROOT, env=CPU_ENV,
                                capture_output=True, text=True)
        one_line_error(second, f"{out} is in use by another run (pid {proc.pid} on ")
    finally:
        proc.kill()
        proc.wait()
    saved = checkpoint.read_state(out / "checkpoint")["step"]
    ssft("--out", out, "--resume", "--stop-after", 2)  # the kernel released the dead run's lock
    assert checkpoint.read_state(out / "checkpoint")["step"] == saved + 2 == len(losses(out))


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
