"""Run an untrusted Python program in isolation: run_program(source, stdin) -> RunResult.

run_program runs `python -I -B main.py` through a launcher (this file with --sandbox) that
isolates, forks the program, enforces the wall clock and reports on a pipe the program cannot
reach. It uses:
- new mount, network, pid and IPC namespaces (and a user namespace when not root). No network:
  a new network namespace has only a loopback device, and it is down. The program is pid 1 of its
  pid namespace: it cannot see or signal anything outside, and when it exits the kernel kills all
  it started, orphans and daemons included. /proc is mounted anew to show only those.
- a new root, as bubblewrap builds one: a tmpfs the program pivot_roots into (the old root then
  detached, unreachable) holding only what the interpreter needs, bind-mounted read-only and
  nosuid at the same paths: /usr, /bin, /sbin, /lib*, /etc/ld.so.cache, /dev/{null,zero,random,
  urandom}, the interpreter and its prefixes (a venv: that directory alone, not the project around
  it), symlinks on the way (/lib -> usr/lib) recreated as symlinks; and the working directory, the
  only writable place: a size-capped tmpfs at the path of a fresh mkdtemp directory, which the
  parent removes afterwards.
- as root, the program runs as nobody (65534) in a user namespace of its own, so RLIMIT_NPROC binds
  (never for root) and counts this sandbox only.
- rlimits: CPU seconds, address space, processes+threads, file size (stdout and stderr are files:
  that caps output), open files, no core dumps; an environment with nothing from the parent.
Threat model: it stops what generated code does by mistake or to hack a reward: runaway CPU,
memory or output, fork bombs, writes outside its directory, the network, reading the parent's
environment, signalling or outliving its parent, and reading the tests: a program that walks the
disk for a world-readable *.jsonl (a prompt file, a benchmark copy) to print the stored output
sees only the directories above: nothing of the project, /tmp, /etc, /sys, home directories or
data. What the interpreter's own directories hold is visible: keep no tests inside them. It is
not a VM: it shares the kernel (an exploit, easier to reach with user namespaces, escapes), sees
the machine's CPUs, memory and load in /proc, can time things. Memory is capped per process, so a
program may hold max_processes x memory_mb in all (bounding the sum takes a cgroup, and privileges
we do not assume).
Without namespaces (unshare refused: root without CAP_SYS_ADMIN, as in many containers, or user
namespaces disabled) only rlimits and sessions are left: a program reads every world-readable file
(tests included), can escape the kill in a session of its own. run_program then refuses
(RuntimeError) unless SSFT_SANDBOX_UNISOLATED=1 asks for it; it then warns once per process and
reports isolated=False. Even there untrusted code never runs as root: as root the program is
dropped to nobody (needs CAP_SETUID and CAP_SETGID only), and the run fails where that fails or
where nobody may not run the interpreter (pyenv or conda below /root, mode 700, and no new root
to show it). Every fallback program is nobody: they can signal each other, and RLIMIT_NPROC counts
them all unless a user namespace of their own is permitted.

Standalone: the standard library only (Linux >= 5.12, Python >= 3.10), nothing from this
project; rewards.py grades LiveCodeBench tests with it.

Run:  python -m pytest -q test_sandbox.py    (what a program sees, never root, the refusal, the attacks)
      python bench/bench_rewards.py          (programs run per second, and a plain subprocess's)
      python sandbox.py --sandbox CONFIG     is the launcher, which run_program starts
"""
import contextlib
import ctypes
import errno
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
UNISOLATED_OK = "SSFT_SANDBOX_UNISOLATED"  # =1: run programs even where nothing isolates them


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
        # What the interpreter needs (-S: the launcher's sys.prefix would miss the venv on 3.10)
        paths = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, sys.executable}
        cfg = dict(dir=workdir, timeout_s=timeout_s, memory_mb=memory_mb, max_file_mb=max_file_mb,
                   max_processes=max_processes, status_fd=status_w, paths=sorted(paths),
                   unisolated_ok=os.environ.get(UNISOLATED_OK) == "1")
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
    if "refused" in report:
        raise RuntimeError(
            f"sandbox: no isolation possible here ({report['refused']}). Unisolated, a program "
            "runs with rlimits only and can read every world-readable file, the tests included. "
            f"Set {UNISOLATED_OK}=1 to run programs that way all the same (see sandbox.py)")
    if "unisolated" in report:
        _warn_unisolated(report["unisolated"])
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


@functools.cache  # once per process, not per program
def _warn_unisolated(why):
    warnings.warn(f"sandbox without isolation ({why}): programs run with rlimits only and can read "
                  f"every world-readable file ({UNISOLATED_OK}=1 asked for it)", stacklevel=3)


# ------------------------------------------------------------------- the launcher (--sandbox)
NOBODY = 65534
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (
    0x20000, 0x8000000, 0x10000000, 0x20000000, 0x40000000)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 1 << 12, 1 << 14, 1 << 18)
MNT_DETACH, MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, AT_FDCWD, AT_RECURSIVE = 2, 1, 2, -100, 0x8000
SYS_MOUNT_SETATTR = 442  # the same on every arch; pivot_root's is not, and libc has no wrapper
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}.get(
    os.uname().machine)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
# What every program sees besides the interpreter's own directories (those that exist here).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc/ld.so.cache",
                "/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
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


def _show(new, path, shown):
    """Bind-mount host `path` at the same path under `new`. A symlink on the way is recreated as
    one and its target shown in turn: following it would show the target under a second path."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        host = "/" + "/".join(parts[:i])
        if host in shown:
            return
        if os.path.islink(host):
            with contextlib.suppress(FileExistsError):
                os.symlink(os.readlink(host), new + host)
            target = os.path.realpath(host, strict=True)  # strict: a loop raises
            return _show(new, os.path.join(target, *parts[i:]), shown)
        if i < len(parts) or os.path.isdir(host):
            with contextlib.suppress(FileExistsError):
                os.mkdir(new + host)
        else:  # a file (ld.so.cache, a device node) is mounted on a file
            open(new + host, "a").close()
    _c("mount", path, new + path, None, MS_BIND | MS_REC, None)
    shown.add(path)


def _isolate(cfg, uid, gid):
    """New namespaces, and the program's new root built on a tmpfs mounted over its (host) working
    directory, which the launcher and the program's parent keep as their cwd."""
    if SYS_PIVOT_ROOT is None:
        raise OSError(errno.ENOSYS, f"pivot_root: syscall number unknown on {os.uname().machine}")
    new, root = cfg["dir"], os.geteuid() == 0
    workdir = new + cfg["dir"]  # the program's, at the same path inside
    with open("main.py", "rb") as f:
        source = f.read()
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
    _c("unshare", flags if root else flags | CLONE_NEWUSER)
    if not root:
        _map_ids(uid, gid)
    _c("mount", "none", "/", None, MS_REC | MS_PRIVATE, None)
    _c("mount", "tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=1024,mode=0755")
    os.umask(0o022)  # the directories made below must be open to the program whatever our umask
    shown = set()
    # Sorted by where they lead: a directory mostly before what is in it (else mounted over that).
    for path in sorted({*SYSTEM_PATHS, *cfg["paths"]}, key=os.path.realpath):
        if os.path.exists(path):
            _show(new, os.path.normpath(path), shown)
    for name, target in (("fd", ""), ("stdin", "/0"), ("stdout", "/1"), ("stderr", "/2")):
        os.symlink("/proc/self/fd" + target, f"{new}/dev/{name}")  # open("/dev/stdin") is common
    os.mkdir(new + "/proc")
    os.makedirs(workdir)
    _c("mount", "tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV,
       f"size={cfg['max_file_mb']}m,nr_inodes=4096,mode=0700,uid={uid},gid={gid}")
    with open(workdir + "/main.py", "wb") as f:
        f.write(source)
    os.chown(workdir + "/main.py", uid, gid)
    # nosuid too: should the program's own user namespace be refused, it runs as nobody in ours
    for path, flags, set_clear in ((new, AT_RECURSIVE, (MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0)),
                                   (workdir, 0, (0, MOUNT_ATTR_RDONLY))):
        attr = struct.pack("4Q", *set_clear, 0, 0)  # struct mount_attr {set, clr, ...}
        _c("syscall", SYS_MOUNT_SETATTR, AT_FDCWD, path, flags, attr, len(attr))


def _enter(path):
    """In the program's process (pid 1 of the new pid namespace): a /proc of that namespace, then
    pivot_root into the new root (at `path`, the working directory's path inside it too) and detach
    the old one. The launcher's root moves with it: it opens no file from then on."""
    # Before the old root goes: a user namespace may mount a proc only where a full one is seen.
    with contextlib.suppress(OSError):  # a container may forbid it all the same: /proc stays empty
        _c("mount", "proc", path + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
           None)
    os.chdir(path)
    _c("syscall", SYS_PIVOT_ROOT, ".", ".")  # the old root is now mounted over "." ...
    _c("umount2", ".", MNT_DETACH)  # ... and gone: not even /proc/PID/root leads back to it
    os.chdir(path)


def _start_program(cfg, isolated, uid, gid):
    """In the forked child (pid 1 of the new pid namespace): enter, drop privileges, limit, exec."""
    os.setsid()  # its own session: kill(0, ...) from the program cannot reach the launcher
    if isolated:
        _enter(cfg["dir"])
    if os.geteuid() == 0:  # never root, even where nothing else isolates it
        if not isolated:  # its working directory, ours until now: it must write there
            os.chown(".", uid, gid)
            os.chown("main.py", uid, gid)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if not os.access(sys.executable, os.X_OK):  # unisolated, below /root (mode 700) say
            raise PermissionError(f"uid {uid} may not run {sys.executable}; root runs no program")
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
    os.execve(sys.executable, [sys.executable, "-I", "-B", "main.py"], _PROGRAM_ENV)


def _launch(cfg):
    """The --sandbox entry point: isolate, fork the program, give it timeout_s, report."""
    status = os.fdopen(cfg["status_fd"], "w")
    os.set_inheritable(cfg["status_fd"], False)  # closed at the program's exec
    uid, gid = (NOBODY, NOBODY) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    report = {}
    try:
        _isolate(cfg, uid, gid)
    except OSError as e:  # namespaces not permitted: rlimits alone, only if asked for
        if not cfg["unisolated_ok"]:
            status.write(json.dumps({"refused": str(e)}))
            return
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
