"""
Nothing silently wrong with a run's files: checksums that prove a directory intact, and one run at
a time per run directory.

Every directory of weights a run writes (its training checkpoint, and out/model, the Hugging Face
export) ends with checksums.json, written last: the size and CRC-32 of every other file
(`write_checksums`; in a checkpoint each rank sums the shard it wrote). torch.distributed.checkpoint
keeps nothing that says whether its bytes are intact, so every use of such a directory (resume, the
export, loading a run's model for evaluation or RL) first reads each file against its checksum,
the ranks sharing the files (`verify`); a flipped byte, a truncated or a missing file stops with
one line naming the file, and changes nothing. CRC-32, not a cryptographic hash: the threat is bit
rot and bad copies, not an adversary, and zlib's CRC-32 is the fastest checksum in Python's
standard library (about 2 GB/s a core here, against 1 GB/s for blake2b and SHA-256; the README
gives its cost per GB); it catches every burst error up to 32 bits and misses random damage with
probability 2^-32, and the sizes catch truncation.

One run at a time holds a run directory (`hold`): an advisory lock (flock) on out/.lock, taken by
rank 0 before anything is read or written there and released by the kernel when the process ends,
however it ends, so a crash never leaves a stale lock. On a shared filesystem of a multi-node run
rank 0's lock is the run's; NFS (v4, or v3 with lockd) and Lustre mounted with `flock` carry it
across nodes, a filesystem that has no working locks (ENOLCK, ENOSYS, EOPNOTSUPP) gets a warning
and no protection, and Lustre's `localflock` protects one node only.

    python -m pytest -q test_checkpoint.py -k "damaged or once or sigkill"
"""
import fcntl
import json
import os
import socket
import sys
import time
import zlib
from pathlib import Path

MANIFEST = "checksums.json"  # written last: its presence marks a complete directory
LOCK = ".lock"  # in a run directory: held (flock) by the run that uses it


def checksums(folder, names):
    """{name: [size, CRC-32]} of these files of `folder`."""
    out = {}
    for name in names:
        crc, size = 0, 0
        with open(Path(folder) / name, "rb") as f:
            while block := f.read(1 << 24):
                crc, size = zlib.crc32(block, crc), size + len(block)
        out[name] = [size, crc]
    return out


def write_checksums(folder, sums):
    """folder/checksums.json, last: the sums given, and those of every other file of the folder."""
    rest = [f.name for f in Path(folder).iterdir() if f.is_file() and f.name not in sums and f.name != MANIFEST]
    with open(Path(folder) / MANIFEST, "w") as f:
        json.dump({**sums, **checksums(folder, rest)}, f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())  # the marker must not reach the disk before the data it vouches for


class Damaged(ValueError):
    """A file of a checkpoint or model directory that is not what was written."""


def verify(folder, world=None, advice=""):
    """Check every file of folder/checksums.json (its size, then its CRC-32), the ranks of `world`
    sharing the files; raise Damaged naming the first bad file (and `advice`) on every rank.
    Returns False when the folder has no checksums (a model from elsewhere, or a checkpoint older
    than checksums)."""
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        return False
    try:
        expected = {str(name): (int(size), int(crc)) for name, (size, crc) in
                    json.loads((folder / MANIFEST).read_text()).items()}
        names = sorted(expected)
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise Damaged(f"{folder / MANIFEST}: not readable ({e}){advice}") from None
    rank, size = (world.rank, world.size) if world else (0, 1)
    problem = None
    for name in names[rank::size]:
        path, (length, crc) = folder / name, expected[name]
        if not path.is_file():
            problem = f"{path}: missing"
        elif path.stat().st_size != length:
            problem = f"{path}: {path.stat().st_size} bytes, {length} were written (cut short or grown)"
        elif checksums(folder, [name])[name][1] != crc:
            problem = f"{path}: its bytes changed since they were written (CRC-32 mismatch)"
        if problem:
            break
    problems = [p for p in (world.gather(problem) if world else [problem]) if p]
    if problems:
        raise Damaged(problems[0] + advice)
    return True


# What to do about a model directory (a run's model/) that fails verify.
MODEL_ADVICE = (f"; restore the model directory from a copy or export it again from its checkpoint (python "
                f"checkpoint.py export), or, if a file was changed on purpose, delete its {MANIFEST}")


def hold(out, world=None):
    """Take the run directory `out` (it must exist) for this run: rank 0 locks out/.lock and writes
    who holds it. Returns the open lock file (the lock lasts as long as it is open; closing it or
    ending the process releases it), or None on other ranks and where locks do not work. Raises
    Busy on every rank when another process holds it."""
    handle, error = None, None
    if world is None or world.main:
        try:
            handle = open(Path(out) / LOCK, "a+")
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            handle.truncate(0)
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                         f"{' '.join(sys.argv)}\n")
            handle.flush()
        except BlockingIOError:
            holder = ""
            for _ in range(20):  # the holder writes who it is just after it locks: give it a moment
                handle.seek(0)
                if holder := handle.read().strip():
                    break
                time.sleep(0.1)
            holder = holder or "a process that has not said who it is yet"
            handle.close()
            handle, error = None, f"{out} is in use by another run ({holder}); wait for it to end or choose another"
        except OSError as e:  # a filesystem without working locks, or a directory that cannot be written
            print(f"warning: cannot lock {Path(out) / LOCK} ({e.strerror}): nothing stops another run from using "
                  f"{out} at the same time", file=sys.stderr)
            if handle:
                handle.close()
            handle = None
    if world is not None:
        error = world.broadcast(error)
    if error:
        raise Busy(error)
    return handle


class Busy(RuntimeError):
    pass
