"""
Training checkpoints (sharded, atomic, resumable on any number of ranks) and the Hugging Face export.

`out/checkpoint/` holds
- the model and AdamW state as a torch.distributed.checkpoint (DCP) directory: every rank writes
  its own shard (`__{rank}_0.distcp`), rank 0 the `.metadata`; DCP reshards on load, so a run
  saved by 2 ranks resumes on 1 or on 4, and no rank ever gathers the full model or optimizer;
- config.json and tokenizer.json, so that the checkpoint exports on its own;
- trainer_state.json (the step, the run's configuration, the trainer's own state);
- checksums.json, written last: the size and CRC-32 of every other file (each rank sums the shard
  it wrote). A directory without it is incomplete (or, with a trainer state that names no
  checksums, written before checkpoints carried them: used, with a warning that it is unchecked).

Every use of a checkpoint (resume, the export) first reads each file against its checksum
(`verify`, integrity.py), and the export holds the run directory while it reads (integrity.hold).

It is written as `out/checkpoint.tmp` and swapped in by renames (checkpoint -> checkpoint.old,
tmp -> checkpoint, then old deleted). `recover(out)` repairs a swap cut at any instant: of the
complete directories it keeps the one with the highest step as `out/checkpoint` and deletes the
others, each deletion starting with its checksums.json and trainer_state.json so that a
half-deleted directory never looks complete. A save that fails (a full disk) deletes its partial
directory and raises SaveError naming the path; the previous checkpoint stays as it was.

`out/model/` is a Hugging Face model directory (bf16 unless asked otherwise; what transformers and
vLLM load) written by `export_hf` at the end of a run, one gathered tensor at a time. The command
below makes the same from any training checkpoint, reading one tensor at a time:

    python checkpoint.py export out/ssft/checkpoint out/ssft-hf [--dtype bfloat16]
    python -m pytest -q test_checkpoint.py
"""
import argparse
import contextlib
import json
import resource
import shutil
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import CheckpointException, FileSystemReader
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

import integrity
from distributed import full_weights
from integrity import MANIFEST, Damaged, checksums, write_checksums
from model import Config, Qwen2

STATE = "trainer_state.json"


@contextlib.contextmanager
def _quiet():
    """DCP warns on every call made without a process group, which one CPU process is by design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


class SaveError(RuntimeError):
    pass


def read_state(ckpt):
    """The trainer state of a checkpoint directory; ValueError naming the file if it is unreadable."""
    path = Path(ckpt) / STATE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable trainer state ({e})") from None


def _step(ckpt):
    """The step of a complete checkpoint directory, else None."""
    try:
        state = read_state(ckpt)
        return state["step"] if (ckpt / MANIFEST).exists() or "checksums" not in state else None
    except (ValueError, KeyError, TypeError):
        return None


def _delete(path):
    for marker in (MANIFEST, STATE):  # first, so that what is left cannot pass for complete
        (path / marker).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def recover(out):
    """Make out/checkpoint the newest complete checkpoint and delete the others (rank 0 only).
    Returns its path, or None if there is none. out/checkpoint itself is only ever renamed into
    place whole, so it is never deleted here for looking incomplete: if it was damaged since, the
    one who uses it refuses it (verify), and nothing is lost."""
    out = Path(out)
    final = out / "checkpoint"
    dirs = [d for d in (out / "checkpoint.tmp", out / "checkpoint.old") if d.is_dir()]
    complete = [(step, d) for d in dirs if (step := _step(d)) is not None]
    if final.is_dir():
        step = _step(final)
        complete.append((float("inf") if step is None else step, final))
    if not complete:
        for d in dirs:
            _delete(d)
        return None
    best = max(complete, key=lambda c: c[0])[1]
    if best != final:
        if final.is_dir():
            final.rename(out / "checkpoint.stale")  # out of the way; deleted below
        best.rename(final)
    for d in out.glob("checkpoint.*"):
        _delete(d)
    return final


def save(out, model, opt, tokenizer, state, world):
    """Write out/checkpoint atomically: every rank its shard, rank 0 the rest. `state` (a JSON
    object with at least "step") goes into trainer_state.json. Raises SaveError on every rank if
    any rank failed to write."""
    out = Path(out)
    tmp = out / "checkpoint.tmp"
    if world.main:
        recover(out)
    world.barrier()
    error, sums = None, {}
    try:
        model_sd, optim_sd = get_state_dict(model, opt)
        with _quiet():
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp, no_dist=not world.group)
        sums = checksums(tmp, [f.name for f in tmp.glob(f"__{world.rank}_*.distcp")])  # each rank its shard
    except (OSError, RuntimeError, CheckpointException) as e:  # DCP's is a BaseException
        error = f"could not write the checkpoint {tmp}: {_reason(e, out)}"
    gathered = world.gather((error, sums))  # every rank's error, and the sums of the shard it wrote
    error = next((e for e, _ in gathered if e), None)
    if world.main and error is None:
        try:
            tokenizer.save(str(tmp / "tokenizer.json"))
            (tmp / "config.json").write_text(json.dumps(model.config.to_json(torch.float32), indent=2))
            (tmp / STATE).write_text(json.dumps({**state, "checksums": MANIFEST}))
            write_checksums(tmp, {name: s for _, rank_sums in gathered for name, s in rank_sums.items()})
        except (OSError, RuntimeError) as e:
            error = f"could not write the checkpoint {tmp}: {_reason(e, out)}"
    error = world.broadcast(error)
    if error:
        if world.main:
            _delete(tmp)
        raise SaveError(error)
    if world.main:
        final, old = out / "checkpoint", out / "checkpoint.old"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        _delete(old)
    world.barrier()


def _reason(e, out):
    """Why a write failed. DCP wraps each rank's error, and torch's zip writer reports a full disk
    or a file-size limit as a bare RuntimeError, so the disk and the limit are looked at too."""
    while isinstance(e, CheckpointException) and e.failures:
        e = next(iter(e.failures.values()))
        e = e[0] if isinstance(e, tuple) else e  # (exception, traceback) pairs
    words = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
    free, limit = shutil.disk_usage(out).free, resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if free < 2**26:
        return f"No space left on device ({free // 2**20} MiB free; {words})"
    if limit != resource.RLIM_INFINITY:
        return f"File too large: files may not exceed {limit} bytes here (ulimit -f; {words})"
    return words


def verify(ckpt, world=None):
    """integrity.verify of a checkpoint, where a trainer state that names checksums that are not
    there also counts as damage. False for a checkpoint written before checksums existed."""
    ckpt = Path(ckpt)
    if not (ckpt / MANIFEST).exists() and (ckpt / STATE).exists() and "checksums" in read_state(ckpt):
        raise Damaged(f"{ckpt / MANIFEST}: missing (the trainer state says it was written)")
    return integrity.verify(ckpt, world)


def load(ckpt, model, opt):
    """Fill model and optimizer from a checkpoint written at any rank count; return its state."""
    model_sd, optim_sd = get_state_dict(model, opt)
    sd = {"model": model_sd, "optim": optim_sd}
    with _quiet():
        dcp.load(sd, checkpoint_id=ckpt, no_dist=not torch.distributed.is_initialized())
    set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    return read_state(ckpt)


def export_hf(model, tokenizer, path, world, dtype=torch.bfloat16):
    """Write a HF model directory from a (sharded) training model, gathering one tensor at a time
    (a collective on every rank; rank 0 writes). Written as path.tmp and renamed."""

    if world.main:
        with _replacing(Path(path)) as tmp:
            model.save_pretrained(tmp, tensors=full_weights(model, dtype), dtype=dtype)
            tokenizer.save(str(tmp / "tokenizer.json"))
            write_checksums(tmp, {})
    else:
        for _ in full_weights(model, dtype):  # the same collectives as rank 0's
            pass
    world.barrier()


def export_checkpoint(ckpt, path, dtype=torch.bfloat16):
    """A HF model directory from a training checkpoint, in one process, one tensor at a time."""
    ckpt, path = Path(ckpt), Path(path)
    if not verify(ckpt) and not (ckpt / STATE).exists():
        raise Damaged(f"{ckpt}: not a complete checkpoint (it has neither {MANIFEST} nor {STATE})")
    with torch.device("meta"):
        model = Qwen2(Config.from_json(ckpt / "config.json"))
    meta = FileSystemReader(ckpt).read_metadata().state_dict_metadata

    def tensors():
        for name in model.checkpoint_tensors():
            info = meta[f"model.{name}"]
            t = torch.empty(tuple(info.size), dtype=info.properties.dtype)
            with _quiet():
                dcp.load({"model": {name: t}}, checkpoint_id=ckpt, no_dist=True)
            yield name, t

    with _replacing(path) as tmp:
        model.save_pretrained(tmp, tensors=tensors(), dtype=dtype)
        shutil.copy(ckpt / "tokenizer.json", tmp / "tokenizer.json")
        write_checksums(tmp, {})


@contextlib.contextmanager
def _replacing(path):
    """Write a directory as path.tmp, which replaces `path` only once complete."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    yield tmp
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def main(argv=None):
    p = argparse.ArgumentParser(description="Export a training checkpoint as a Hugging Face model directory.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="checkpoint directory -> HF model directory")
    e.add_argument("checkpoint", help="e.g. out/ssft/checkpoint")
    e.add_argument("out", help="the HF model directory to write")
    e.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    a = p.parse_args(argv)
    try:
        lock = integrity.hold(Path(a.checkpoint).parent)  # no run may swap the checkpoint while it is read
        try:
            export_checkpoint(a.checkpoint, a.out, getattr(torch, a.dtype))
        finally:
            if lock:
                lock.close()
    except Damaged as err:
        sys.exit(f"error: {err}; this checkpoint cannot be exported: restore it from a copy")
    except (ValueError, OSError, KeyError, integrity.Busy) as err:
        sys.exit(f"error: {err}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
