"""More hostile programs (issue 19): attacks on what the launcher reports and the evaluator judges, on the
interpreter state the program inherits, and on the processes around it. Each must end as the program's
own failure (never PASSED without the answer, never SANDBOX_ERROR) and never raise in the evaluator."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from autojudge_eval.sandbox import SandboxLimits, TestCase, TestKind, Verdict, run_program
from autojudge_eval.sandbox.launcher import program_events

FAST = SandboxLimits(cpu_seconds=1.0, wall_seconds=1.0, total_wall_seconds=20.0, fail_fast=False)
SECRET = f"secret-{uuid.uuid4().hex}"
STDIN = [TestCase("1", SECRET)]
FUNCTIONAL = [TestCase("1", json.dumps(SECRET), TestKind.FUNCTIONAL, "f")]
CALL = [TestCase("[1]", json.dumps({"op": "eq", "value": SECRET}), TestKind.CALL, "f")]
DEEP_VALUE = b'{"i": 0, "event": "value", "json": "' + b"[" * 200_000 + b'"}\n'


def functional(body: str, prelude: str = "") -> str:
    indented = "".join(f"        {line}\n" for line in body.splitlines())
    return f"{prelude}class Solution:\n    def f(self, a):\n{indented}"


NOT_A_PASS = {
    # The judge: real-time signals have no name (this crashed the judge into SANDBOX_ERROR).
    "real_time_signal": ("import os\nos.kill(os.getpid(), 40)\n", STDIN),
    "real_time_signal_functional": (functional("import os\nos.kill(os.getpid(), 50)"), FUNCTIONAL),
    # A forged value nested 200k deep (this raised RecursionError in the judge: SANDBOX_ERROR, or worse).
    "deep_forged_value": (
        functional(f"import os, time\nos.write(1000, {DEEP_VALUE!r})\ntime.sleep(2)"),
        FUNCTIONAL,
    ),  # fmt: skip
    # Exceptions that fight being described.
    "str_raises_systemexit": (
        "class E(Exception):\n    def __str__(self):\n        raise SystemExit(0)\nraise E()\n",
        STDIN,
    ),  # fmt: skip
    "repr_loops": (
        "class E(Exception):\n    def __repr__(self):\n        return repr(self)\n"
        "    __str__ = __repr__\nraise E()\n",
        STDIN,
    ),  # fmt: skip
    "name_raises": (
        "class M(type):\n    @property\n    def __name__(cls):\n        raise SystemExit(0)\n"
        "class E(Exception, metaclass=M):\n    pass\nraise E()\n",
        STDIN,
    ),  # fmt: skip
    "name_raises_functional": (
        functional(
            "raise E()",
            "class M(type):\n    @property\n    def __name__(c):\n"
            "        raise SystemExit(0)\nclass E(Exception, metaclass=M):\n    pass\n",
        ),
        FUNCTIONAL,
    ),  # fmt: skip
    # Returned objects that pretend.
    "list_subclass_iter_reduce": (
        functional(
            "return L(['x'])",
            "class L(list):\n    def __iter__(self):\n"
            f"        return iter([{SECRET!r}])\n    def __reduce__(self):\n"
            f"        return (list, ([{SECRET!r}],))\n",
        ),
        FUNCTIONAL,
    ),  # fmt: skip
    "str_subclass_eq": (
        "class S(str):\n    def __eq__(self, o):\n        return True\n    __hash__ = str.__hash__\n"
        "def f(a):\n    return S('x')\n",
        CALL,
    ),  # fmt: skip
    # The program patches what encodes its value, or the interpreter around it.
    "patched_json_dumps": (
        functional(
            "return 1", "import json\njson.dumps = lambda *a, **k: '\"%s\"' % open('/nonexistent').read()\n"
        ),
        FUNCTIONAL,
    ),  # fmt: skip
    "patched_builtins": (
        functional(
            "return 1",
            "import builtins\nbuiltins.isinstance = lambda *a: True\nbuiltins.type = lambda *a: list\n",
        ),
        FUNCTIONAL,
    ),  # fmt: skip
    "stdout_whose_flush_raises": (
        "import sys\nclass O:\n    def write(self, s):\n        return len(s)\n"
        "    def flush(self):\n        raise KeyboardInterrupt\nsys.stdout = O()\n",
        STDIN,
    ),  # fmt: skip
    "stdout_whose_flush_exits": (
        "import sys\nclass O:\n    def write(self, s):\n        return len(s)\n"
        "    def flush(self):\n        raise SystemExit(0)\nsys.stdout = O()\n",
        [TestCase("", kind=TestKind.SCRIPT)],
    ),  # fmt: skip
    "huge_int_to_str": ("import sys\nsys.set_int_max_str_digits(0)\nprint(10 ** 3_000_000)\n", STDIN),
    "recursion_limit_lifted": (
        "import sys\nsys.setrecursionlimit(10 ** 8)\ndef r(n):\n    return r(n + 1)\nr(0)\n",
        STDIN,
    ),  # fmt: skip
    "exit_code_256": ("import os\nos.close(1000)\nraise SystemExit(256)\n", STDIN),
}


@pytest.mark.parametrize("name", sorted(NOT_A_PASS))
def test_hostile_programs_fail_as_the_program(name):
    code, tests = NOT_A_PASS[name]
    result = run_program(code, tests, FAST)
    verdicts = {o.verdict for o in result.outcomes}
    assert not verdicts & {Verdict.PASSED, Verdict.SANDBOX_ERROR}, result.outcomes
    for o in result.outcomes:  # every detail can be written out as UTF-8
        o.detail.encode("utf-8")


def test_no_string_of_any_expected_output_is_reachable_from_the_program():
    """Every object the program's interpreter holds (the launcher's, inherited by fork, included)."""
    code = (
        "import gc, sys\nfound, needle = [], 'secr' + 'et-'\n"
        "def scan(v):\n"  # an expected output: the needle and 32 more characters
        "    text = v.decode('latin-1') if isinstance(v, bytes) else v if isinstance(v, str) else ''\n"
        "    at = text.find(needle)\n"
        "    if at >= 0 and len(text) >= at + len(needle) + 32:\n"
        "        found.append(len(text))\n"
        "for obj in gc.get_objects():\n"
        "    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple, set)) else ()\n"
        "    for v in list(items):\n        scan(v)\n"
        "frame = sys._getframe()\n"
        "while frame:\n    [scan(v) for v in frame.f_locals.values()]\n    frame = frame.f_back\n"
        "print(len(found))\n"
    )
    tests = [TestCase(str(i), f"secret-{uuid.uuid4().hex}") for i in range(3)]
    result = run_program(code, tests, FAST)
    assert [o.output for o in result.outcomes] == ["0"] * 3, result.outcomes


def test_flooded_and_nested_events_cost_the_launcher_nothing():
    """Three million junk lines and a line nested 5000 deep on the event descriptor, then the right answer:
    judged on its stdout, quickly (the launcher keeps only the first and last 64 event lines, flat)."""
    deep = b'{"event": "raised", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"
    code = f"import os\nos.write(1000, b'{{}}\\n' * 3_000_000 + {deep!r})\nprint({SECRET!r})\n"
    started = time.monotonic()
    result = run_program(code, STDIN, FAST)
    assert result.passed, result.outcomes
    assert time.monotonic() - started < 3.0


def test_program_events_are_flat_known_and_bounded():
    lines = [b'{"event": "raised", "detail": "a", "extra": [1], "type": {"x": 1}}', b"not json",
             b'{"event": "sandbox_verdict", "verdict": "passed"}', b'{"i": 0, "event": "value", "json": "3"}']  # fmt: skip
    assert program_events(b"\n".join(lines)) == [
        {"event": "raised", "detail": "a"},
        {"i": 0, "event": "value", "json": "3"},
    ]
    flood = b'{"event": "exit", "code": 1}\n' * 10_000 + b'{"event": "finished"}\n'
    events = program_events(flood)
    assert len(events) == 128 and events[-1] == {"event": "finished"}


def test_a_lone_surrogate_in_an_event_detail_stays_writable():
    code = 'import os\nos.write(1000, b\'{"event": "raised", "type": "X", "detail": "\\\\ud800"}\\n\')\n'
    result = run_program(code + "raise SystemExit(3)\n", STDIN, FAST)
    assert result.outcomes[0].verdict is Verdict.RUNTIME_ERROR
    json.dumps(result.to_dict(), ensure_ascii=False).encode("utf-8")


def test_no_process_of_a_test_outlives_its_verdict():
    """Test 0 leaves a daemon (double fork, new session) that writes a file into the shared work dir
    after test 0 ended; test 1 looks for it. Also threads and atexit handlers print after the end."""
    code = (
        "import atexit, os, sys, threading, time\n"
        "if sys.stdin.readline().strip() == '0':\n"
        "    if os.fork() == 0:\n        os.setsid()\n"
        "        if os.fork() == 0:\n            time.sleep(0.3)\n            open('late', 'w').write('x')\n"
        "        os._exit(0)\n"
        "    threading.Thread(target=lambda: (time.sleep(0.05), print('late'))).start()\n"
        "    atexit.register(print, 'late')\n"
        "    print('first')\n"
        "else:\n    time.sleep(0.6)\n    print(os.path.exists('late'))\n"
    )
    result = run_program(code, [TestCase("0", "first"), TestCase("1", "False")], FAST)
    assert [o.verdict for o in result.outcomes] == [Verdict.PASSED] * 2, result.outcomes
