"""LiveCodeBench loading, hidden-test decoding, prompts, code extraction and grading on real rows."""

from __future__ import annotations

import base64
import json
import os
import pickle
import uuid
import zlib
from datetime import date, datetime
from pathlib import Path

import pytest

from autojudge_eval.benchmarks.livecodebench import (
    FORMAT_WITH_STARTER_CODE,
    FORMAT_WITHOUT_STARTER_CODE,
    SYSTEM_MESSAGE,
    CodeProblem,
    Platform,
    TestType,
    build_messages,
    build_prompt,
    decode_private_tests,
    extract_code,
    grade,
    grade_many,
    load_livecodebench,
    parse_problem,
    to_row,
)
from autojudge_eval.errors import DataError
from autojudge_eval.sandbox import SandboxLimits, TestKind, Verdict

DATA_DIR = Path(
    os.environ.get("AUTOJUDGE_DATA_DIR") or Path(__file__).resolve().parents[2].parent / "shared" / "data"
)
LCB_DIR = DATA_DIR / "livecodebench"
HIDDEN = ("abc387_a", "abc389_b", "abc391_a", "abc392_a", "abc393_a", "abc398_a", "abc400_a", "abc400_b")
LIMITS = SandboxLimits(cpu_seconds=4.0, wall_seconds=4.0)
ABC387_A = "a, b = map(int, input().split())\nprint((a + b) ** 2)\n"
ZIGZAG = """class Solution:
    def zigzagTraversal(self, grid: List[List[int]]) -> List[int]:
        cells = [x for i, row in enumerate(grid) for x in (row if i % 2 == 0 else row[::-1])]
        return cells[::2]
"""


@pytest.fixture(scope="module")
def problems() -> dict[str, CodeProblem]:
    if not (LCB_DIR / "problems.jsonl").is_file():
        pytest.skip(f"LiveCodeBench data not found at {LCB_DIR}; set AUTOJUDGE_DATA_DIR")
    return {p.id: p for p in load_livecodebench(LCB_DIR)}


def test_rows_load_as_typed_problems(problems):
    assert len(problems) > 200
    for problem in problems.values():
        assert problem.public_tests and problem.version in ("v5", "v6")
        functional = problem.platform is Platform.LEETCODE
        assert (problem.test_type is TestType.FUNCTIONAL) == functional == bool(problem.func_name)
        assert all(t.kind is (TestKind.FUNCTIONAL if functional else TestKind.STDIN) for t in problem.tests())
    assert problems["abc387_a"].contest_date == datetime(2025, 1, 4)


def test_release_v1_loads_from_a_file_path():
    path = LCB_DIR / "release_v1" / "problems.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    v1 = load_livecodebench(path)
    assert len(v1) == 400 and not any(p.private_tests for p in v1)
    with pytest.raises(DataError, match="_version"):
        load_livecodebench(path, release="release_v1")


def test_hidden_tests_decode_for_all_eight(problems):
    for qid in HIDDEN:
        private = problems[qid].private_tests
        assert len(private) == 40, qid
        assert all(t.kind is TestKind.STDIN and t.expected for t in private)
    assert sum(1 for p in problems.values() if p.private_tests) == len(HIDDEN)


def test_correct_stdin_solution_passes_public_and_hidden_tests(problems):
    graded = grade(problems["abc387_a"], ABC387_A, LIMITS)
    assert graded.passed and graded.used_private_tests
    assert len(graded.result.outcomes) == 44
    public_only = grade(problems["abc387_a"], ABC387_A, LIMITS, include_private=False)
    assert public_only.passed and not public_only.used_private_tests and len(public_only.result.outcomes) == 4


def test_wrong_stdin_solution_fails(problems):
    graded = grade(problems["abc387_a"], "a, b = map(int, input().split())\nprint(a + b)\n", LIMITS)
    assert not graded.passed
    assert graded.result.outcomes[0].verdict is Verdict.WRONG_ANSWER
    assert {o.verdict for o in graded.result.outcomes[1:]} == {Verdict.NOT_RUN}  # fail_fast, as upstream


def test_functional_solution_is_graded_by_return_value(problems):
    problem = problems["3708"]
    assert problem.func_name == "zigzagTraversal" and "List[int]" in problem.starter_code
    wrong = ZIGZAG.replace("cells[::2]", "cells[1::2]")
    right, bad = grade_many([(problem, ZIGZAG), (problem, wrong)], LIMITS, workers=2)
    assert right.passed and not right.used_private_tests
    assert bad.result.outcomes[0].verdict is Verdict.WRONG_ANSWER
    assert "expected" in bad.result.outcomes[0].detail


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch /tmp/autojudge-pwned-{MARK}",))


MARK = uuid.uuid4().hex


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    field = base64.b64encode(zlib.compress(pickle.dumps(_Exploit()))).decode()
    with pytest.raises(DataError, match="refusing"):
        decode_private_tests(field)
    row = {"question_id": "evil", "question_title": "t", "question_content": "c", "platform": "atcoder"}
    row |= {"contest_date": "2025-01-01T00:00:00", "difficulty": "easy", "metadata": "{}"}
    row |= {"public_test_cases": json.dumps([{"input": "1", "output": "1", "testtype": "stdin"}])}
    row["private_test_cases"] = field
    (tmp_path / "problems.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"problems\.jsonl:1: problem evil"):
        load_livecodebench(tmp_path)
    assert not Path(f"/tmp/autojudge-pwned-{MARK}").exists()
    plain = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(row["public_test_cases"])))).decode()
    with pytest.raises(DataError, match="test cases"):
        decode_private_tests(plain)  # a JSON string holding a string, not a list


def test_corrupt_line_names_file_and_line(tmp_path):
    good = json.dumps({"question_id": "x"})  # parses, but fields are missing
    (tmp_path / "bad.jsonl").write_text('{"question_id": "ok"\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1"):
        load_livecodebench(tmp_path / "bad.jsonl")
    (tmp_path / "missing.jsonl").write_text("\n" + good + "\n")
    with pytest.raises(DataError, match=r"missing\.jsonl:2: problem x: missing field"):
        load_livecodebench(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="no LiveCodeBench problems"):
        load_livecodebench(tmp_path / "nowhere")


def test_release_and_date_filters(problems):
    v6 = load_livecodebench(LCB_DIR, release="v6")
    assert v6 and {p.version for p in v6} == {"v6"}
    assert len(load_livecodebench(LCB_DIR, release="release_v6")) == len(problems)
    january = load_livecodebench(LCB_DIR, start_date="2025-01-01", end_date=date(2025, 1, 31))
    assert january and all(p.contest_date.strftime("%Y-%m") == "2025-01" for p in january)


def test_hub_path_raises_data_error_when_offline(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(DataError, match="local problems.jsonl"):
        load_livecodebench(None, release="v6")


def test_prompt_uses_the_official_wording(problems):
    stdin_prompt = build_prompt(problems["abc387_a"])
    assert stdin_prompt.startswith("### Question:\n") and FORMAT_WITHOUT_STARTER_CODE in stdin_prompt
    assert "```python\n# YOUR CODE HERE\n```" in stdin_prompt
    assert stdin_prompt.endswith("### Answer: (use the provided format with backticks)\n\n")
    leetcode = build_prompt(problems["3708"])
    assert FORMAT_WITH_STARTER_CODE in leetcode and problems["3708"].starter_code in leetcode
    assert build_messages(problems["3708"])[0] == {"role": "system", "content": SYSTEM_MESSAGE}


def test_extract_code():
    two = "Plan:\n```\nnot code\n```\nFirst:\n```python\nprint(1)\n```\nBetter:\n```Python\nprint(2)\n```\nDone."
    assert extract_code(two) == "print(2)"
    assert extract_code("```\nshort\n```\n```text\nthe longest block\n```") == "the longest block"
    assert extract_code("Here:\n```python\nx = 1\nprint(x)") == "x = 1\nprint(x)"  # cut off mid-block
    assert extract_code("print(3)") == ""
    assert extract_code("  print(3)\n", raw_fallback=True) == "print(3)"


def test_parse_problem_rejects_unknown_platform():
    row = {"question_id": "q", "question_title": "t", "question_content": "c", "platform": "topcoder"}
    row |= {"contest_date": "2025-01-01T00:00:00", "difficulty": "easy", "public_test_cases": "[]"}
    with pytest.raises(DataError, match="problem q"):
        parse_problem(row)


def test_rows_round_trip(problems):
    for problem in problems.values():
        row = to_row(problem)
        assert parse_problem(json.loads(json.dumps(row))) == problem
    assert to_row(problems["abc387_a"])["private_test_cases"].startswith("[")
    assert to_row(problems["abc387_b"])["private_test_cases"] == ""


def test_judge_card_split_names_the_mined_problems_contest_dates():
    from types import SimpleNamespace

    from autojudge_eval.cli.mine import describe_split

    source = LCB_DIR / "release_v1"
    if not (source / "problems.jsonl").is_file():
        pytest.skip(f"{source} not found")
    v1 = load_livecodebench(source)
    picked = [v1[0], v1[10], v1[100]]
    mined = SimpleNamespace(
        problems=[SimpleNamespace(problem_id=p.id) for p in picked],
        manifests=[{"task": "livecodebench", "data": {"source": str(source)}}],
    )
    split = describe_split(mined)
    dates = sorted(str(p.contest_date.date()) for p in picked)
    assert split["contest_dates"] == [dates[0], dates[-1]] and split["problems"] == 3
    assert (
        split["problem_ids"] == sorted(p.id for p in picked) and "later contest dates" in split["evaluate_on"]
    )
    gsm8k = SimpleNamespace(problems=picked[:1], manifests=[{"task": "gsm8k", "data": {"split": "train"}}])
    gsm8k.problems = [SimpleNamespace(problem_id="gsm8k-train-1")]
    assert describe_split(gsm8k)["splits"] == ["train"]
