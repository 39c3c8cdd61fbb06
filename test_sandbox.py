"""Tests for sandbox.py: what a program can see, that it never runs as root, the refusal to run
unisolated unless asked, and the attacks and limits.

Run: python -m pytest -q test_sandbox.py

A program that solves nothing can walk the disk for the tests (a world-readable *.jsonl) and print
the stored output; so we plant such files where a run's tests could lie (/tmp, the project folder,
the home directory) and check that a program finds none of them: not by its exact path, not by
listing its folder, not by walking the whole tree. The fallback (no namespaces) is forced as root
without CAP_SYS_ADMIN (setpriv), which may not unshare.

Every attack is bounded even if the sandbox failed (a fork bomb stops at 300 processes, a memory
bomb at 2 GB, output at 1 GB): CI runs as root, where RLIMIT_NPROC alone would not stop a real
bomb. After each attack we check that this process survived, that the program's directory is gone
and that none of its processes is left (a leftover would still show `main.py` in its command line).
"""
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from sandbox import SYSTEM_PATHS, UNISOLATED_OK, run_program

HERE = Path(__file__).resolve().parent  # the project folder (sandbox.py's)
SANDBOX = HERE / "sandbox.py"


def isolated():
    try:
        return run_program("pass").isolated
    except RuntimeError:  # no namespaces, and the unisolated run not asked for
        return False


needs_namespaces = pytest.mark.skipif(not isolated(), reason="namespaces are not permitted here")
needs_setpriv = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                   reason="needs root and setpriv")


def as_user(uid, argv, **kwargs):
    """Run argv as uid (and gid uid), no supplementary groups."""
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=120, **kwargs)


def python_for(uid):
    """An interpreter uid may run (ours may lie below a closed folder: pyenv in /root), or None."""
    candidates = (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3")
    for exe in filter(os.path.exists, candidates):
        # Through sh: setpriv execs with its capabilities still in force, so that it could run.
        if as_user(uid, ["/bin/sh", "-c", 'exec "$0" -c "import json"', exe]).returncode == 0:
            return exe
    return None


def search(paths):
    """A program that looks for `paths` three ways and prints what it found, as JSON."""
    return f"""
import json, os
found = {{}}
for path in {[str(p) for p in paths]!r}:
    name, parent = os.path.basename(path), os.path.dirname(path)
    try:
        listed = name in os.listdir(parent)
    except OSError as e:
        listed = e.strerror
    found[path] = dict(exists=os.path.exists(path), listed=listed)
    try:
        found[path]["read"] = open(path).read()
    except OSError as e:
        found[path]["read"] = e.strerror
names = {{os.path.basename(p) for p in found}}
walked = []
for top, dirs, files in os.walk("/"):
    if top == "/":  # nothing is planted there, and the host's /sys would take long to walk
        dirs[:] = [d for d in dirs if d not in ("proc", "sys")]
    walked += [os.path.join(top, f) for f in names.intersection(dirs + files)]
print(json.dumps(dict(found=found, walked=walked)))
"""


def assert_none_found(result, paths):
    assert result.status == "ok", result.stderr
    seen = json.loads(result.stdout)
    for path in map(str, paths):
        assert seen["found"][path]["exists"] is False, (path, seen)
        assert seen["found"][path]["listed"] is not True, (path, seen)
        assert "tests" not in seen["found"][path]["read"], (path, seen)
    assert seen["walked"] == [], seen


def plant(folder, mode=0o644):
    """A tests file, as an RL prompt file or a benchmark copy would hold them."""
    path = Path(folder) / f"ssft-planted-{uuid.uuid4().hex}.jsonl"
    path.write_text(json.dumps({"tests": [{"input": "2 3\n", "output": "5\n"}]}) + "\n")
    path.chmod(mode)
    return path


@pytest.fixture
def planted():
    """World-readable tests in /tmp, the project folder and a fresh folder in ~; removed after."""
    home = Path(tempfile.mkdtemp(prefix="ssft-planted-", dir=Path("~").expanduser()))
    home.chmod(0o755)
    paths = [plant(tempfile.gettempdir()), plant(HERE), plant(home)]
    try:
        yield paths
    finally:
        for path in paths[:2]:
            path.unlink(missing_ok=True)
        shutil.rmtree(home)


@needs_namespaces
def test_planted_tests_are_invisible(planted):
    assert_none_found(run_program(search(planted), timeout_s=30), planted)


@needs_namespaces
def test_system_folders_show_nothing_of_the_host(planted):
    probe = """
import json, os
seen = {}
for path in ("/etc/passwd", "/etc/hostname", "/home", "/work", "/tmp", "/root", "/etc", "/sys"):
    try:
        seen[path] = sorted(os.listdir(path)) if os.path.isdir(path) else open(path).read()
    except OSError as e:
        seen[path] = e.strerror
print(json.dumps(dict(seen=seen, cwd=os.getcwd())))
"""
    result = run_program(probe)
    assert result.status == "ok", result.stderr
    seen, cwd = json.loads(result.stdout).values()
    # Listed may be only what lies on the way to the working directory, the interpreter, the system.
    on_the_way = {part for p in (cwd, sys.prefix, sys.base_prefix, sys.executable,
                                 os.path.realpath(sys.executable), *SYSTEM_PATHS)
                  for part in Path(p).parts}
    for path, what in seen.items():
        if isinstance(what, list):
            assert set(what) <= on_the_way, (path, what)
        else:  # a file's text, or why it could not be read
            assert what in ("No such file or directory", "Permission denied"), (path, what)
    assert not any(p.name in json.dumps(seen) for p in planted)


@needs_namespaces
def test_programs_still_run():
    probe = """
import bisect, collections, decimal, fractions, functools, heapq, itertools, json, math, os, re
import random, sqlite3, sys
sqlite3.connect(":memory:").execute("select 1")
try:
    import numpy
    print("numpy", int(numpy.arange(10).sum()))
except ImportError:
    print("numpy", "missing")
with open("out.txt", "w") as f:
    f.write("written")
print(open("out.txt").read(), open("/dev/stdin").read().strip(), len(os.urandom(4)))
open("/dev/null", "w").write("x")
"""
    result = run_program(probe, "from stdin\n")
    assert result.status == "ok", result.stderr
    lines = result.stdout.splitlines()
    if importlib.util.find_spec("numpy"):  # installed here: then the program imports it too
        assert lines[0] == "numpy 45"
    assert lines[1] == "written from stdin 4"


@needs_namespaces
def test_nothing_but_the_working_directory_is_writable():
    targets = ["/", "/tmp", "/usr", "/dev", sys.prefix, sys.base_prefix, str(HERE)]
    probe = f"""
import os
for folder in {targets!r} + [os.path.dirname(os.getcwd())]:
    for make in (lambda p: open(p, "w").close(), os.mkdir):
        try:
            make(os.path.join(folder, "ssft-attack-root"))
            print("MADE", folder)
        except OSError as e:
            print("refused", folder, e.strerror)
"""
    result = run_program(probe)
    assert result.status == "ok" and "MADE" not in result.stdout, result.stdout
    assert "refused" in result.stdout
    for folder in targets:  # should one have got through, leave nothing behind
        path = Path(folder, "ssft-attack-root")
        assert not path.exists()


@needs_namespaces
def test_program_is_not_root():
    result = run_program("import os\nprint(os.getuid(), os.geteuid(), os.getgid(), os.getegid())")
    assert result.status == "ok" and "0" not in result.stdout.split(), result.stdout


@needs_setpriv
def test_unprivileged_caller_hides_its_own_files():
    # Not root: the program runs as the caller, in a user namespace; the caller's own files (mode
    # 600) in its home and in its project folder stay out of reach too.
    uid = 54321
    python = python_for(uid)
    if python is None:
        pytest.skip(f"no interpreter uid {uid} may run")
    home = Path(tempfile.mkdtemp(prefix="ssft-home-"))  # not tmp_path: below a folder closed to uid
    try:
        project = home / "project"
        project.mkdir()
        shutil.copy(SANDBOX, project)
        paths = [plant(home, 0o600), plant(project, 0o600)]
        for path in (home, project, *project.iterdir()):
            os.chown(path, uid, uid)
        caller = f"""
import sandbox
try:
    print(sandbox.run_program({search(paths)!r}, timeout_s=30).stdout)
except RuntimeError as e:
    print("REFUSED", e)
"""
        done = as_user(uid, [python, "-I", "-c", f"import sys; sys.path.insert(0, '.')\n{caller}"],
                       cwd=project, env={"HOME": str(home), "PATH": os.environ.get("PATH", "")})
    finally:
        shutil.rmtree(home)
    assert done.returncode == 0, done.stderr
    if done.stdout.startswith("REFUSED"):
        pytest.skip(f"no user namespaces for uid {uid}: {done.stdout}")
    seen = json.loads(done.stdout)
    assert all(not f["exists"] and f["listed"] is not True and "tests" not in f["read"]
               for f in seen["found"].values()) and seen["walked"] == [], seen


def unisolated(python, script, env):
    """Run script with python as root without CAP_SYS_ADMIN, so that sandbox cannot unshare."""
    return subprocess.run(["setpriv", "--bounding-set=-sys_admin", python, "-I", "-c",
                           f"import sys; sys.path.insert(0, {str(HERE)!r})\n{script}"],
                          capture_output=True, text=True, timeout=120, env=env)


@needs_setpriv
def test_fallback_refuses_unless_asked():
    script = """
from sandbox import run_program
try:
    print("RAN", run_program("print(6 * 7)"))
except RuntimeError as e:
    print("REFUSED", e)
"""
    env = {k: v for k, v in os.environ.items() if k != UNISOLATED_OK}
    done = unisolated(sys.executable, script, env)
    assert done.stdout.startswith("REFUSED"), done.stdout + done.stderr
    assert f"{UNISOLATED_OK}=1" in done.stdout and "unshare" in done.stdout, done.stdout


@needs_setpriv
def test_fallback_program_is_not_root_and_keeps_its_limits():
    # Asked for, the unisolated run drops the program to nobody, who must be able to run python,
    # warns once, and still has its rlimits (CPU time, memory).
    python = python_for(65534)
    if python is None:
        pytest.skip("no interpreter nobody may run")
    script = """
import json, warnings
from sandbox import run_program
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    runs = [run_program("import os\\nopen('x', 'w').write('x')\\nprint(os.getuid(), os.geteuid())")
            for _ in range(2)]
    runs += [run_program("while True: pass", timeout_s=1.0), run_program("x = bytearray(1 << 31)", memory_mb=256)]
print(json.dumps(dict(runs=[(r.status, r.isolated, r.stdout) for r in runs],
                      warnings=[str(w.message) for w in caught])))
"""
    done = unisolated(python, script, {**os.environ, UNISOLATED_OK: "1"})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["runs"] == [["ok", False, "65534 65534\n"]] * 2 + [["timeout", False, ""], ["memory", False, ""]], seen
    assert len(seen["warnings"]) == 1 and UNISOLATED_OK in seen["warnings"][0], seen
    assert leftovers() == []


# ------------------------------------------------------- the attacks and the limits


def leftovers():
    """Processes whose command line names a sandboxed program or an attack's marker."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ssft-attack" in cmd or (b"main.py" in cmd and b"-I\0-B" in cmd):
            found.append((pid, cmd))
    return found


def sandbox_dirs():
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("ssft-sandbox-")}


def attack(source, **limits):
    """Run an attack; check that we survived and that it left nothing behind."""
    before = sandbox_dirs()
    result = run_program(source, **limits)
    assert sandbox_dirs() == before and leftovers() == []
    return result


def test_correct_and_wrong_programs():
    ok = run_program("a, b = map(int, input().split())\nprint(a + b)", "2 3\n")
    assert (ok.status, ok.stdout, ok.returncode) == ("ok", "5\n", 0)
    crash = run_program("raise SystemExit(3)")
    assert (crash.status, crash.returncode) == ("runtime_error", 3)
    assert "ZeroDivisionError" in run_program("1 / 0").stderr
    big = run_program("import sys; print(len(sys.stdin.read()))", "x" * 1_000_000)
    assert big.stdout == "1000000\n"
    utf8 = run_program("print(input()[::-1], 'é')", "été ✓\n")
    assert utf8.stdout == "✓ été é\n"


def test_infinite_loop():
    result = attack("while True:\n    pass", timeout_s=1.0)
    assert result.status == "timeout" and result.seconds < 4.0


def test_sleeping_program_hits_the_wall_clock():
    result = attack("import time\ntime.sleep(30)", timeout_s=1.0)
    assert result.status == "timeout" and result.seconds < 4.0


@needs_namespaces
def test_fork_bomb():
    # Stops at 300 processes even if nothing limits it; each child sleeps, then exits.
    bomb = """
import os, time
n = 0
try:
    for _ in range(300):
        if os.fork() == 0:
            time.sleep(20)
            os._exit(0)
        n += 1
finally:
    print(n, flush=True)
"""
    result = attack(bomb, max_processes=16)
    assert int(result.stdout.split()[0]) < 16


def test_memory_bomb():
    bomb = "x = []\nfor _ in range(20):\n    x.append(bytearray(100 << 20))\nprint('alive')"
    result = attack(bomb, memory_mb=256)
    assert result.status == "memory" and "alive" not in result.stdout


@needs_namespaces
def test_write_outside_the_working_directory(tmp_path):
    targets = [tmp_path / "pwned", Path(tempfile.gettempdir()) / f"ssft-attack-{os.getpid()}",
               Path(__file__).resolve().parent / "ssft-attack-pwned", Path("/var/tmp/ssft-attack")]
    os.chmod(tmp_path, 0o777)  # open to anyone: only the sandbox can refuse
    probe = f"""
import os
for path in {[str(t) for t in targets]!r}:
    try:
        open(path, "w").write("x")
        print("WROTE", path)
    except OSError as e:
        print("refused", path, e.strerror)
open("inside.txt", "w").write("fine")
print("cwd", os.getcwd(), open("inside.txt").read())
"""
    try:
        result = attack(probe)
        assert "WROTE" not in result.stdout and "fine" in result.stdout, result.stdout
        assert not any(t.exists() for t in targets)
    finally:  # should it have got through, leave nothing in the repository or /tmp
        for t in targets:
            t.unlink(missing_ok=True)
    cwd = re.search(r"cwd (\S+)", result.stdout).group(1)
    assert not os.path.exists(cwd)  # the working directory is removed afterwards


@needs_namespaces
def test_reading_the_parents_environment():
    # The caller is started with the secret in its environment (so also in /proc/PID/environ).
    probe = """
import glob, os
print(dict(os.environ))
for path in glob.glob("/proc/*/environ") + [f"/proc/{os.getppid()}/environ"]:
    try:
        print(path, open(path, "rb").read())
    except OSError as e:
        print(path, e)
"""
    caller = f"from rewards import run_program\nprint(run_program({probe!r}).stdout)"
    done = subprocess.run([sys.executable, "-c", caller], capture_output=True, text=True,
                          env={**os.environ, "SSFT_SECRET": "hunter2-ssft"}, timeout=60,
                          cwd=Path(__file__).parent)
    assert "/proc/1/environ" in done.stdout and "hunter2" not in done.stdout, done.stderr
    assert leftovers() == []


@needs_namespaces
def test_network_connection():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    probe = f"""
import socket
for address in [("127.0.0.1", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)]:
    try:
        socket.create_connection(address, timeout=2).close()
        print("CONNECTED", address)
    except OSError as e:
        print("refused", address, e)
"""
    try:
        result = attack(probe)
    finally:
        server.close()
    assert result.status == "ok" and "CONNECTED" not in result.stdout, result.stdout


def test_huge_output():
    # At most 1 GB even if nothing stops it.
    result = attack("import sys\nfor _ in range(10_000):\n    sys.stdout.write('x' * 100_000)",
                    max_file_mb=1)
    assert result.status == "output_limit" and len(result.stdout) == 1 << 20
    assert result.seconds < 5.0


@needs_namespaces
def test_child_that_outlives_its_parent():
    # Double fork: a grandchild in its own session, so killing the program's group misses it.
    probe = """
import os, sys, time

def cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:  # gone meanwhile
        return b""

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        sleeper = [sys.executable, "-c", "import time; time.sleep(20)", "ssft-attack"]
        os.execv(sys.executable, sleeper)
    os._exit(0)
for _ in range(100):  # wait until the sleeper runs
    time.sleep(0.05)
    if any(b"ssft-attack" in cmdline(p) for p in os.listdir("/proc") if p.isdigit()):
        print("sleeper running")
        break
"""
    result = attack(probe)
    assert result.status == "ok" and "sleeper running" in result.stdout, result.stderr


@needs_namespaces
def test_killing_the_parent():
    probe = f"""
import os, signal
for pid in (os.getppid(), {os.getpid()}):
    try:
        os.kill(pid, signal.SIGKILL)
        print("sent", pid)
    except OSError as e:
        print("refused", pid, e.strerror)
"""
    attack(probe)  # we are still here to check: that is the test


@needs_namespaces
def test_isolation_facts():
    probe = """
import os
print(os.getpid(), os.getppid(), sum(map(str.isdigit, os.listdir("/proc"))))
"""
    result = run_program(probe)
    assert result.isolated and result.stdout.split() == ["1", "0", "1"]  # alone in its pid ns
    if os.geteuid() == 0:
        assert run_program("import os\nprint(os.getuid())").stdout == "65534\n"
