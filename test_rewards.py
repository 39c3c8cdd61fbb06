"""Tests for rewards.py: math answer grading and the code sandbox.

Run: python -m pytest -q test_rewards.py

Every attack is bounded even if the sandbox failed (a fork bomb stops at 300 processes, a memory
bomb at 2 GB, output at 1 GB): CI runs as root, where RLIMIT_NPROC alone would not stop a real
bomb. After each attack we check that this process survived, that the program's directory is gone
and that none of its processes is left (a leftover would still show `main.py` in its command line).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import rewards
from rewards import (extract_code, extract_math, grade_code, grade_math, math_equal,
                     parse_gold, run_program)

MATH500 = Path(__file__).resolve().parents[1] / "shared" / "data" / "math500.jsonl"


# ------------------------------------------------------------------------------------ math
def test_math500_solutions_agree_with_their_answers():
    rows = [json.loads(line) for line in MATH500.read_text().splitlines()]
    wrong = [r["unique_id"] for r in rows if not grade_math(r["solution"], r["answer"])]
    assert len(rows) == 500 and wrong == []  # the issue asks >= 99%; math-verify 0.9.0 gets 500


@pytest.mark.parametrize("response", [
    r"\boxed{70}", r"\boxed{070}", "The answer is 70", "$70$", "The answer is 070.",
    r"Therefore, the final answer is: $\boxed{70}$. I hope it is correct", "**Answer:** 70",
    r"so we get \[ \boxed{70} \]", r"The final answer is $\boxed{70}$", "70",
])
def test_aime_answer_forms(response):
    assert grade_math(response, "70")


@pytest.mark.parametrize("response,gold", [
    (r"\boxed{\frac{1}{2}}", "0.5"),  # fraction = decimal
    (r"\boxed{0.5}", r"\frac12"),
    (r"\boxed{\dfrac{14}{3}}", r"\frac{14}{3}"),  # \dfrac and \frac
    (r"\boxed{x^2+2x+1}", "(x+1)^2"),  # symbolic equality
    (r"\boxed{(3, \pi/2)}", r"\left( 3, \frac{\pi}{2} \right)"),  # tuples, \left \right
    (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}"),  # text answers
    (r"\boxed{10\%}", "10"),  # percent
    (r"\boxed{x=5}", "5"),  # an assignment against its value
    (r"\boxed{1,2}", "2,1"),  # answer lists are sets
    (r"\boxed{\{1,2\}}", "1,2"),
    (r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt2}{2}"),
    (r"\boxed{x \in [2, 5)}", "[2,5)"),  # intervals
    (r"\boxed{1{,}000}", "1000"),  # thousands separators
    (r"\boxed{5\text{ cm}}", "5"),  # units
    (r"\boxed{30^\circ}", "30"),  # degrees
    (r"\boxed{\begin{pmatrix}1\\2\end{pmatrix}}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
    (r"The final answer is 70. Hmm, no: \boxed{71}", "71"),  # the later answer counts
    (r"\boxed{70}", r"so the answer is $\boxed{70}$."),  # gold given as a solution text
    (r"\boxed{70}", "$70$"),
    (r"\boxed{\$18.90}", r"\$18.90"),  # an escaped dollar in a bare gold is not math mode
    (r"It costs $\$18.90$.", r"\$18.90"),
])
def test_equivalent(response, gold):
    assert grade_math(response, gold)


@pytest.mark.parametrize("response,gold", [
    (r"\boxed{71}", "70"),  # a different number
    (r"\boxed{-70}", "70"),  # the wrong sign
    (r"\boxed{-\frac{1}{2}}", r"\frac12"),
    (r"\boxed{[1,2]}", "(1,2]"),  # a different interval
    (r"\boxed{(2,5)}", "[2,5)"),
    (r"\boxed{3}", r"\pi"),  # no rounding of exact constants
    (r"\boxed{1.4142}", r"\sqrt2"),
    (r"\boxed{x^2+1}", "(x+1)^2"),
    (r"\boxed{(1,2)}", "(2,1)"),  # tuples are ordered
    (r"\boxed{\text{Carla}}", r"\text{Evelyn}"),
    ("I do not know.", "70"),  # nothing to extract
    ("", "70"),
    ("So \\boxed{70}.\n\nWait, that is wrong. Starting over, we get \\boxed{71}.", "70"),
    (r"The final answer is 70. Hmm, no: \boxed{71}", "70"),  # a right answer, then another
    (r"Therefore, the final answer is: $\boxed{71}$. I hope it is correct", "70"),
])
def test_not_equivalent(response, gold):
    assert not grade_math(response, gold)


def test_answers_for_majority_votes():
    gold = parse_gold(r"\frac{14}{3}")
    texts = r"so \boxed{\frac{14}{3}}", r"\boxed{\dfrac{14}{3}}", "$14/3$"
    same = [extract_math(t) for t in texts]
    assert all(a == gold and math_equal(gold, a) for a in same)
    decimal = extract_math(r"\boxed{4.666667}")  # equal in value, a different vote candidate
    assert decimal != gold and math_equal(gold, decimal)
    assert extract_math("I do not know.") is None
    assert not math_equal(gold, extract_math(r"\boxed{5}"))
    votes = [extract_math(r"\boxed{5}"), *same]
    assert max(votes, key=votes.count) == gold  # the official vote: the most common by ==
    assert parse_gold(70) == extract_math("The answer is 070")


def test_pathological_response_is_cut_off():
    assert grade_math("1", "1")  # a helper is running: its start-up is not timed
    start = time.monotonic()
    assert not grade_math("1 " * 200_000, "5", timeout_s=1.0)  # slow regex work: own timer
    assert time.monotonic() - start < 3.0
    assert grade_math(r"\boxed{5}", "5")  # the helper is still usable


def test_stuck_helper_is_killed_and_replaced():
    assert grade_math(r"\boxed{5}", "5")
    helper = rewards._math_idle[-1]
    os.kill(helper.pid, signal.SIGSTOP)  # as if stuck in C code that no signal interrupts
    start = time.monotonic()
    assert not grade_math(r"\boxed{5}", "5", timeout_s=0.5)
    assert time.monotonic() - start < 4.0 and helper.poll() is not None
    assert grade_math(r"\boxed{5}", "5")


def test_grading_from_threads():
    results = {}

    def work(i):
        results[i] = grade_math(rf"\boxed{{{i}}}", str(i)) and not grade_math(r"\boxed{-1}", str(i))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: True for i in range(4)}


# --------------------------------------------------------------------------------- sandbox
ISOLATED = run_program("pass").isolated
needs_namespaces = pytest.mark.skipif(not ISOLATED, reason="namespaces are not permitted here")


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


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="root and setpriv")
def test_fallback_without_namespaces():
    # Without CAP_SYS_ADMIN root may not unshare: the run falls back to rlimits and says so.
    script = """
import json, warnings
from rewards import run_program
warnings.simplefilter("ignore")
runs = [run_program("print(6 * 7)"), run_program("while True: pass", timeout_s=1.0),
        run_program("x = bytearray(1 << 31)", memory_mb=256)]
print(json.dumps([(r.status, r.isolated, r.stdout) for r in runs]))
"""
    done = subprocess.run(["setpriv", "--bounding-set=-sys_admin", sys.executable, "-c", script],
                          capture_output=True, text=True, cwd=Path(__file__).parent, timeout=60)
    assert json.loads(done.stdout) == [["ok", False, "42\n"], ["timeout", False, ""],
                                       ["memory", False, ""]], done.stderr
    assert leftovers() == []


# ----------------------------------------------------------------------------- grade_code
STDIN_TESTS = [{"input": "2 3\n", "output": "5\n", "testtype": "stdin"},
               {"input": "10 -4\n", "output": "6", "testtype": "stdin"}]


def test_grade_code_stdin():
    assert grade_code("a, b = map(int, input().split())\nprint(a + b)", STDIN_TESTS).passed
    # LiveCodeBench's prelude: deque and sys are there without an import
    lcb_style = "d = deque(map(int, sys.stdin.read().split()))\nprint(sum(d))"
    assert grade_code(lcb_style, STDIN_TESTS).passed
    wrong = grade_code("a, b = map(int, input().split())\nprint(a - b)", STDIN_TESTS)
    assert not wrong.passed and wrong.results == ["wrong_answer"]  # stops at the first failure
    slow = grade_code("while True: pass", STDIN_TESTS, timeout_s=1.0)
    assert not slow.passed and slow.results == ["timeout"]


@pytest.mark.parametrize("printed,expected,same", [
    ("5  \n", "5", True), ("1 2\n3\n", "1 2\n3", True), ("0.50\n", "0.5\n", True),
    ("1  2", "1 2", True), ("6", "5", False), ("5\n5", "5", False), ("abc", "ab c", False),
])
def test_stdin_output_comparison(printed, expected, same):
    program = f"print({printed!r}, end='')"
    test = {"input": "", "output": expected, "testtype": "stdin"}
    assert grade_code(program, [test]).passed == same


def test_grade_code_functional():
    tests = [{"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]", "testtype": "functional"},
             {"input": "[3, 3]\n6", "output": "[0, 1]", "testtype": "functional"}]
    solution = """
class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        print("debug output is ignored")
        seen = {}
        for i, x in enumerate(nums):
            if target - x in seen:
                return (seen[target - x], i)  # a tuple counts as a list, as in LiveCodeBench
            seen[x] = i
"""
    assert grade_code(solution, tests, func_name="twoSum").passed
    missing = grade_code(solution, tests, func_name="threeSum")
    assert not missing.passed and missing.results == ["runtime_error"]
    function = "def twoSum(nums, target):\n    return [0, 1]"
    assert grade_code(function, tests, func_name="twoSum").passed
    wrong = grade_code("def twoSum(nums, target):\n    return [1, 0]", tests, func_name="twoSum")
    assert not wrong.passed and wrong.results == ["wrong_answer"]
    with pytest.raises(ValueError, match="func_name"):
        grade_code(function, tests)


def test_extract_code():
    response = "Idea...\n```python\nprint(1)\n```\nBetter:\n```python\nprint(2)\n```\nDone."
    assert extract_code(response) == "print(2)"
    assert extract_code("no code") == ""
