"""Run an untrusted Python program in isolation: run_program(source, stdin) -> RunResult.

run_program runs `python -I -B main.py` through a launcher (this file with --sandbox) that
isolates, forks the program, enforces the wall clock and reports on a pipe the program cannot
reach. It uses:
- new mount, network, pid and IPC namespaces (and a user namespace when not root). No network:
  a new network namespace has only a loopback device, and it is down. The program is pid 1 of its
  pid namespace: it cannot see or signal anything outside, and when it exits the kernel kills all
  it started, orphans and daemons included. /proc is remounted to show only those.
- the filesystem read-only (recursive mount_setattr) except the working directory: a size-capped
  tmpfs over a fresh mkdtemp directory, which the parent removes afterwards.
- as root, the program runs as nobody (65534) in a user namespace of its own, so RLIMIT_NPROC binds
  (never for root) and counts this sandbox only. Interpreter directories under an ancestor closed
  to nobody (/root, mode 700) are shown through a tmpfs that hides the rest of it.
- rlimits: CPU seconds, address space, processes+threads, file size (stdout and stderr are files:
  that caps output), open files, no core dumps; an environment with nothing from the parent.
Where namespaces are not permitted it falls back to rlimits and sessions, warns, and reports
isolated=False. Threat model: it stops what generated code does by mistake or to hack a reward:
runaway CPU, memory or output, fork bombs, writes outside its directory, the network, reading the
parent's environment, signalling or outliving its parent. It is not a VM: it shares the kernel (an
exploit, easier to reach with user namespaces, escapes), reads world-readable files (and, when not
root, the user's own), sees /sys, can time things. Memory is capped per process, so a program may
hold max_processes x memory_mb in all (bounding the sum takes a cgroup, and privileges we do not
assume). The fallback has no namespace guarantees, and as root there RLIMIT_NPROC does not bind.

Standalone: the standard library only (Linux, Python >= 3.10), nothing from this
project; rewards.py grades LiveCodeBench tests with it.

Run:  python -m pytest -q test_rewards.py   (its tests: the attacks, the fallback, the limits)
      python bench/bench_rewards.py          (programs run per second, and a plain subprocess's)
      python sandbox.py --sandbox CONFIG     is the launcher, which run_program starts
"""
import contextlib
import ctypes
import functools
import json
import math
import os
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

_THIS = os.path.abspath(__file__)


# ----------------------------------------------------------------------- the caller (run_program)
@dataclass
class RunResult:
    stdout: str
    stderr: str  # its last 64 KiB
    returncode: int | None  # negative: killed by that signal; None: killed with the launcher
    status: str  # "ok", "timeout", "memory", "output_limit" or "runtime_error"
    seconds: float
    isolated: bool  # namespaces were in force (see the module docstring)


def run_program(source: str, stdin: str = "", timeout_s: float = 6.0, memory_mb: int = 2048,
                max_processes: int = 16, max_file_mb: int = 16) -> RunResult:
    """Run Python `source` in the sandbox; never raises for anything the program does.

    max_file_mb caps every file it writes, stdout and stderr included (they are files too)."""
    workdir = tempfile.mkdtemp(prefix="ssft-sandbox-")
    at = functools.partial(os.path.join, workdir)
    status_r, status_w = os.pipe()
    start = time.monotonic()
    try:
        for name, text in (("main.py", source), ("stdin", stdin)):
            with open(at(name), "w", encoding="utf-8") as f:  # what the program decodes
                f.write(text)
        paths = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
        cfg = dict(dir=workdir, timeout_s=timeout_s, memory_mb=memory_mb, max_file_mb=max_file_mb,
                   max_processes=max_processes, status_fd=status_w, paths=sorted(paths))
        with open(at("stdin"), "rb") as fin, open(at("stdout"), "wb+") as fout, \
                open(at("stderr"), "wb+") as ferr:
            launcher = [sys.executable, "-I", "-S", "-B", _THIS, "--sandbox", json.dumps(cfg)]
            proc = subprocess.Popen(launcher, stdin=fin, stdout=fout, stderr=ferr, env={},
                                    cwd=workdir, start_new_session=True, pass_fds=(status_w,))
            os.close(status_w)
            try:
                proc.wait(timeout_s + 5.0)  # the launcher enforces timeout_s itself
            except subprocess.TimeoutExpired:  # never expected: the launcher hung
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            fout.seek(0)  # the program shared this file offset
            out = fout.read()
            ferr.seek(max(0, os.fstat(ferr.fileno()).st_size - (1 << 16)))
            err = ferr.read()
        report = {}  # the launcher's line, after the child's if it failed before exec
        for line in os.read(status_r, 1 << 16).decode().splitlines():
            report.update(json.loads(line))
    finally:
        os.close(status_r)
        shutil.rmtree(workdir, ignore_errors=True)
    if "setup_error" in report:
        raise RuntimeError(f"sandbox setup failed: {report['setup_error']}")
    if "unisolated" in report:
        warnings.warn(f"sandbox without namespaces ({report['unisolated']}): see sandbox.py")
    code = report.get("returncode")
    if report.get("timed_out", True) or code in (-signal.SIGXCPU, -signal.SIGKILL):
        status = "timeout"  # wall clock, or the CPU-time limit (SIGXCPU, then SIGKILL)
    elif len(out) >= max_file_mb << 20:
        status = "output_limit"  # the kernel refused more (EFBIG)
    elif code == 0:
        status = "ok"
    else:
        status = "memory" if b"MemoryError" in err else "runtime_error"
    return RunResult(out.decode(errors="replace"), err.decode(errors="replace"), code, status,
                     time.monotonic() - start, "unisolated" not in report)


# ------------------------------------------------------------------- the launcher (--sandbox)
NOBODY = 65534
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (
    0x20000, 0x8000000, 0x10000000, 0x20000000, 0x40000000)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 1 << 14, 1 << 18
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # the same on every arch
AT_FDCWD, AT_RECURSIVE, OPEN_TREE_CLONE, MOVE_MOUNT_F_EMPTY_PATH = -100, 0x8000, 1, 4
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
# Nothing from the parent. One thread for BLAS and OpenMP, as LiveCodeBench sets too: otherwise
# numpy starts a thread per core and fails to import under RLIMIT_NPROC on a many-core machine.
_PROGRAM_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _c(name, *args):
    """Call libc `name`; OSError on a negative return."""
    ret = getattr(ctypes.CDLL(None, use_errno=True), name)(
        *[a.encode() if isinstance(a, str) else a for a in args])
    if ret < 0:
        raise OSError(ctypes.get_errno(), f"{name}{args[:2]}: {os.strerror(ctypes.get_errno())}")
    return ret


def _map_ids(uid, gid):
    """Map our own ids into the user namespace we just entered (all an unprivileged user may)."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _expose(paths):
    """Root only: let nobody reach `paths` when an ancestor (e.g. /root, mode 700) is closed."""
    moves = []
    for path in paths:  # detach every tree first: a tmpfs mounted below would hide later ones
        parts = path.split("/")
        closed = [p for p in ("/".join(parts[:i]) for i in range(2, len(parts) + 1))
                  if not os.stat(p).st_mode & 0o001]
        if closed and not any(path.startswith(p + "/") for p, _, _ in moves):
            tree = _c("syscall", SYS_OPEN_TREE, AT_FDCWD, path, OPEN_TREE_CLONE | AT_RECURSIVE)
            moves.append((path, closed[0], tree))
    for i, (path, closed, tree) in enumerate(moves):
        if closed not in [c for _, c, _ in moves[:i]]:
            _c("mount", "tmpfs", closed, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        os.makedirs(path, exist_ok=True)
        _c("syscall", SYS_MOVE_MOUNT, tree, "", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH)


def _isolate(cfg, uid, gid):
    """New namespaces; everything read-only but the working directory, a fresh tmpfs."""
    workdir, root, main = cfg["dir"], os.geteuid() == 0, os.path.join(cfg["dir"], "main.py")
    with open(main, "rb") as f:
        source = f.read()
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
    _c("unshare", flags if root else flags | CLONE_NEWUSER)
    if not root:
        _map_ids(uid, gid)
    _c("mount", "none", "/", None, MS_REC | MS_PRIVATE, None)
    if root:
        _expose(cfg["paths"])
    _c("mount", "tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV,
       f"size={cfg['max_file_mb']}m,nr_inodes=4096,mode=0700,uid={uid},gid={gid}")
    with open(main, "wb") as f:
        f.write(source)
    os.chown(main, uid, gid)
    for path, flags, set_clear in (("/", AT_RECURSIVE, (1, 0)), (workdir, 0, (0, 1))):
        attr = struct.pack("4Q", *set_clear, 0, 0)  # struct mount_attr {set, clr, ...}: RDONLY = 1
        _c("syscall", SYS_MOUNT_SETATTR, AT_FDCWD, path, flags, attr, len(attr))


def _start_program(cfg, isolated, uid, gid):
    """In the forked child (pid 1 of the new pid namespace): drop privileges, limit, exec."""
    os.setsid()  # its own session: kill(0, ...) from the program cannot reach the launcher
    if isolated:
        try:
            _c("mount", "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, None)
        except OSError:  # a container may forbid a new proc: hide the host's processes instead
            _c("mount", "tmpfs", "/proc", "tmpfs", MS_RDONLY, "size=4k")
    if isolated and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        _c("prctl", PR_SET_DUMPABLE, 1, 0, 0, 0)  # setuid cleared it; /proc/self must stay ours
        with contextlib.suppress(OSError):  # own user namespace: RLIMIT_NPROC counted per sandbox
            _c("unshare", CLONE_NEWUSER)
            _map_ids(uid, gid)
    _c("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # should the launcher be killed
    cpu, mem, size = math.ceil(cfg["timeout_s"]), cfg["memory_mb"] << 20, cfg["max_file_mb"] << 20
    for res, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, mem, mem),
                            (resource.RLIMIT_FSIZE, size, size), (resource.RLIMIT_NOFILE, 256, 256),
                            (resource.RLIMIT_NPROC, cfg["max_processes"], cfg["max_processes"]),
                            (resource.RLIMIT_CORE, 0, 0)):
        resource.setrlimit(res, (soft, hard))
    os.chdir(cfg["dir"])
    os.execve(sys.executable, [sys.executable, "-I", "-B", "main.py"], _PROGRAM_ENV)


def _launch(cfg):
    """The --sandbox entry point: isolate, fork the program, give it timeout_s, report."""
    status = os.fdopen(cfg["status_fd"], "w")
    os.set_inheritable(cfg["status_fd"], False)  # closed at the program's exec
    uid, gid = (NOBODY, NOBODY) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    report = {}
    try:
        _isolate(cfg, uid, gid)
    except OSError as e:  # namespaces not permitted: run with rlimits alone, and say so
        report["unisolated"] = str(e)
    pid = os.fork()
    if pid == 0:
        try:
            _start_program(cfg, "unisolated" not in report, uid, gid)
        except BaseException as e:
            status.write(json.dumps({"setup_error": f"{type(e).__name__}: {e}"}) + "\n")
            status.flush()
        os._exit(125)
    report["timed_out"] = not select.select([os.pidfd_open(pid)], [], [], cfg["timeout_s"])[0]
    if report["timed_out"]:
        os.kill(pid, signal.SIGKILL)  # pid 1: the kernel then kills its whole namespace
    with contextlib.suppress(ProcessLookupError):  # without namespaces: what it left in its session
        os.killpg(pid, signal.SIGKILL)  # (before reaping, while that group id cannot be reused)
    report["returncode"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    status.write(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--sandbox"]:
        _launch(json.loads(sys.argv[2]))
    else:
        sys.exit("sandbox.py is a library; --sandbox CONFIG is its launcher (run_program's)")
