"""
run.py and checkpoint.py, by breaking things on purpose: corrupt input files, a checkpoint swap cut
at any instant, kills mid-run, SIGTERM / SIGUSR1 / Ctrl-C (also under torchrun), divergence, a
failed save, a cut-off metrics line; and the learning-rate schedule. Each case checks the exit
code, that no traceback reaches the user, the message, and what is (not) left in --out.

    python -m pytest -q test_run.py
"""
import json
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

import checkpoint
import run
import ssft
from conftest import CPU_ENV, ROOT, TORCHRUN, one_line_error, read_metrics, ssft_cli
from conftest import TINY_RUN as TINY
from flags import parse_flags
from run import lr_at


def losses(out):
    return read_metrics(out, "loss")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 8-step run that the interrupted ones must reproduce."""
    out = tmp_path_factory.mktemp("full")
    ssft.train(*parse_flags(ssft.SSFTConfig, TINY + ["--steps", "8", "--out", str(out)]))
    return out


# -------------------------------------------------------------------------------------------------
# Files


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("tinymodel")
    ssft.train(*parse_flags(ssft.SSFTConfig, TINY + ["--steps", "1", "--out", str(out), "--export-dtype", "float32"]))
    return out / "model"


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]),
     "model.safetensors: "),
    (lambda d: (d / "config.json").write_text("{not json"), "config.json: not a readable config.json"),
    (lambda d: (d / "config.json").write_text(json.dumps({"hidden_size": 64})), "field 'vocab_size' must be"),
    (lambda d: (d / "tokenizer.json").write_text("garbage"), "tokenizer.json: not a valid tokenizer.json"),
    (lambda d: (d / "model.safetensors").unlink(), "model.safetensors: not a readable safetensors checkpoint"),
])
def test_corrupt_model_files_are_named(tiny_model, tmp_path, damage, message):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "checksums.json").unlink()  # a model from elsewhere: the loader's own checks must name the file
    damage(model)
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"question": "sort 312", "traces": ["a", "b", "c", "d"]}) + "\n")
    out = tmp_path / "out"
    one_line_error(ssft_cli(["--model", str(model), "--data", str(data), "--batch", "1", "--out", str(out)]), message)
    assert not out.exists()


# -------------------------------------------------------------------------------------------------
# The checkpoint swap


def fake_checkpoint(path, step, complete=True):
    path.mkdir(parents=True)
    (path / "__0_0.distcp").write_text("shard")
    if complete:
        (path / checkpoint.STATE).write_text(json.dumps({"step": step}))


@pytest.mark.parametrize("present,expected", [
    ({"checkpoint": 4, "checkpoint.tmp": None}, 4),  # killed while writing tmp
    ({"checkpoint": 4, "checkpoint.tmp": 6}, 6),  # killed after tmp was complete, before the swap
    ({"checkpoint.old": 4, "checkpoint.tmp": 6}, 6),  # killed between the two renames
    ({"checkpoint": 6, "checkpoint.old": 4}, 6),  # killed before the old one was deleted
    ({"checkpoint": 6, "checkpoint.old": None}, 6),  # killed while deleting it (marker gone first)
    ({"checkpoint.old": 4}, 4),
    ({"checkpoint.tmp": None}, None),
    ({}, None),
])
def test_recover_keeps_the_newest_complete_checkpoint(tmp_path, present, expected):
    for name, step in present.items():
        fake_checkpoint(tmp_path / name, step, complete=step is not None)
    found = checkpoint.recover(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["checkpoint"] if expected else [])
    assert (found is None) == (expected is None)
    if expected:
        assert checkpoint.read_state(found)["step"] == expected


def test_a_leftover_old_checkpoint_does_not_block_saving(tmp_path, full_run):
    out = tmp_path / "run"
    ssft.train(*parse_flags(ssft.SSFTConfig, TINY + ["--steps", "8", "--stop-after", "4", "--out", str(out)]))
    shutil.copytree(out / "checkpoint", out / "checkpoint.old")  # as a kill during its deletion leaves it
    ssft.train(*parse_flags(ssft.SSFTConfig, ["--out", str(out), "--resume"]))
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
    assert losses(out) == losses(full_run)


def wait_for_steps(out, n, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n} steps in {out}")


def test_kills_at_random_instants_then_resume_exactly(tmp_path, full_run):
    """SIGKILL (no chance to clean up) at three instants of a run that saves after every step, each
    followed by --resume: the final metrics equal the uninterrupted run's."""
    out = tmp_path / "run"
    args = TINY + ["--steps", "8", "--save-every", "1", "--out", str(out)]
    for steps, delay in ((2, 0.02), (4, 0.1), (6, 0.05)):  # a few ms after a step's line: mid-save
        resume = out.is_dir() and checkpoint.recover(out) is not None
        proc = subprocess.Popen([sys.executable, "ssft.py", *(["--out", str(out), "--resume"] if resume else args)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_steps(out, steps, proc)
        time.sleep(delay)
        proc.kill()
        proc.wait()
    assert ssft_cli(["--out", str(out), "--resume"]).returncode == 0
    assert losses(out) == losses(full_run)
    assert not (out / "checkpoint.tmp").exists() and not (out / "checkpoint.old").exists()


# -------------------------------------------------------------------------------------------------
# Signals, divergence, a failed save, a cut-off line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_a_signal_saves_and_resume_is_exact(sig, tmp_path, full_run):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "ssft.py", *TINY, "--steps", "8", "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(out, 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig and "Traceback" not in err
    assert "stopped by signal" in err and "--resume" in err
    saved = checkpoint.read_state(out / "checkpoint")["step"]
    assert 2 <= saved < 8 and len(losses(out)) == saved
    assert ssft_cli(["--out", str(out), "--resume"]).returncode == 0
    assert losses(out) == losses(full_run)


def test_sigterm_to_torchrun_stops_every_rank_together(tmp_path):
    """SIGTERM to torchrun: both ranks stop at the same step and write their shards, and the run
    resumed on two ranks equals an uninterrupted two-rank run."""
    env, torchrun = CPU_ENV, TORCHRUN + ["ssft.py"]
    out, full = tmp_path / "run", tmp_path / "full"
    args = TINY + ["--steps", "12"]
    proc = subprocess.Popen(torchrun + args + ["--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(out, 2, proc)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    _, err = proc.communicate(timeout=120)
    saved = checkpoint.read_state(out / "checkpoint")["step"]
    assert 2 <= saved < 12 and len(losses(out)) == saved, err[-2000:]
    assert len(list((out / "checkpoint").glob("*.distcp"))) == 2  # both ranks wrote their shard
    for cmd in (torchrun + ["--out", str(out), "--resume"], torchrun + args + ["--out", str(full)]):
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert losses(out) == losses(full)


def test_divergence_stops_before_the_optimizer_steps(tmp_path):
    out = tmp_path / "run"
    proc = ssft_cli(TINY + ["--steps", "8", "--lr", "1e4", "--mode", "mixed", "--save-every", "1", "--out", str(out)])
    one_line_error(proc, "is nan; the optimizer did not step and nothing was saved")
    assert "--resume --lr 1000" in proc.stderr
    step = checkpoint.read_state(out / "checkpoint")["step"]
    assert f"(step {step})" in proc.stderr and not (out / "model").exists()
    assert all(l == l for l in losses(out))  # no NaN was logged as a step


def test_a_failed_save_says_why_and_keeps_the_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    ssft.train(*parse_flags(ssft.SSFTConfig, TINY + ["--steps", "6", "--stop-after", "2", "--out", str(out)]))

    def small_files():  # files may not grow past 100 kB: the checkpoint's shard is bigger
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = subprocess.run([sys.executable, "ssft.py", "--out", str(out), "--resume"], cwd=ROOT, capture_output=True,
                          text=True, preexec_fn=small_files)
    one_line_error(proc, "could not write the checkpoint")
    assert str(out / "checkpoint.tmp") in proc.stderr and "File too large" in proc.stderr
    assert checkpoint.read_state(out / "checkpoint")["step"] == 2 and not (out / "checkpoint.tmp").exists()
    assert ssft_cli(["--out", str(out), "--resume"]).returncode == 0


def test_a_cut_off_metrics_line_does_not_block_resume(tmp_path, full_run):
    out = tmp_path / "run"
    ssft.train(*parse_flags(ssft.SSFTConfig, TINY + ["--steps", "8", "--stop-after", "3", "--out", str(out)]))
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 2.3')  # a crash in the middle of a write
    ssft.train(*parse_flags(ssft.SSFTConfig, ["--out", str(out), "--resume"]))
    assert losses(out) == losses(full_run)


def test_resume_of_a_finished_run_says_so_or_trains_longer(tmp_path, full_run, capsys):
    out = tmp_path / "run"
    shutil.copytree(full_run, out)
    ssft.train(*parse_flags(ssft.SSFTConfig, ["--out", str(out), "--resume"]))
    assert "the run is finished (8 of 8 steps); pass --steps N to train longer" in capsys.readouterr().out
    ssft.train(*parse_flags(ssft.SSFTConfig, ["--out", str(out), "--resume", "--steps", "10"]))
    assert len(losses(out)) == 10
    proc = ssft_cli(["--out", str(out), "--resume", "--mode", "random"])
    one_line_error(proc, "--mode random: the run in")


def test_metrics_reader_skips_what_a_crash_leaves(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert run.read_metrics(path) == []  # no file yet
    path.write_text('{"step": 1, "loss": 2.0}\n[1, 2]\n{"loss": 1.0}\n{"step": "2"}\n\n{"step": 2, "loss": NaN}\n{"st')
    records = run.read_metrics(path)
    assert [r["step"] for r in records] == [1, 2] and records[0] == {"step": 1, "loss": 2.0}


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_at(s, lr=1.0, steps=100, warmup=0.1, min_lr=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and 0.1 <= lrs[-1] < 0.101
