"""The report's "same behaviour as target" for code tasks: programs that differ in text but do the same on the
tests count as alike; a changed verdict or a changed wrong output does not. Real sandbox runs."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path

import pytest

from autojudge_eval.benchmarks.livecodebench import CodeProblem, Difficulty, Platform, TestType, to_row
from autojudge_eval.reports.behaviour import behaviour_agreements, code_family
from autojudge_eval.sandbox import TestCase
from autojudge_eval.sweeps.runs import PointResult

HUMANEVAL_DOC = {
    "task_id": "Toy/0",
    "prompt": "def add(a, b):\n",
    "entry_point": "add",
    "canonical_solution": "    return a + b\n",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
}


def stdin_doc(expected: str) -> dict:
    problem = CodeProblem(
        id="toy", title="double", content="print twice the number", platform=Platform.ATCODER,
        difficulty=Difficulty.EASY, contest_id="abc0", contest_date=datetime(2024, 10, 1), starter_code="",
        test_type=TestType.STDIN, func_name="", public_tests=(TestCase("3\n", expected),), private_tests=(),
        version="v5",
    )  # fmt: skip
    return to_row(problem)


def points(task: str, docs: list[dict], programs: dict[str, list[str]], folder: Path) -> list[PointResult]:
    """One point per method, answers as ``runs.read_samples`` keeps them; the docs in the target's samples."""
    samples = folder / "samples.jsonl"
    samples.write_text("".join(json.dumps({"doc_id": i, "doc": d}) + "\n" for i, d in enumerate(docs)))
    return [
        PointResult(
            run_id="r",
            name=name,
            mode="target" if name == "target" else "autojudge",
            topk=None,
            threshold=None,
            task=task,
            pair="p",
            window=4,
            judge="none",
            metric="pass@1,extract-code",
            accuracy=0.0,
            stderr=0.0,
            speed={},
            command="lm_eval ...",
            n_docs=len(texts),
            answers={i: json.dumps([t]) for i, t in enumerate(texts)},
            samples=samples,
        )  # fmt: skip
        for name, texts in programs.items()
    ]


def test_stdin_programs_compare_by_verdict_and_wrong_output(tmp_path):
    # doc 0 expects 6 (doubling passes); doc 1 expects 7, so doubling is a wrong answer that prints 6
    docs = [stdin_doc("6\n"), stdin_doc("7\n")]
    found = behaviour_agreements(
        points(
            "autojudge_livecodebench",
            docs,
            {
                "target": ["print(int(input()) * 2)", "print(int(input()) * 2)"],
                "renamed": ["x = int(input())\nprint(x + x)", "y = int(input())\nprint(y + y)"],
                "changed": ["print(int(input()) + 1)", "print(int(input()) + 1)"],  # 4: fails doc 0, 4 != 6
                "comment": [
                    "print(int(input()) * 2)  # double",
                    "print(int(input())*2)",
                ],  # same canonical text
            },
            tmp_path,
        ),
        cache=tmp_path / "cache.jsonl",
        workers=1,
        progress=False,
    )
    key = ("r", "autojudge_livecodebench")
    rate = {name: found[(*key, name)].rate for name in ("target", "renamed", "changed", "comment")}
    assert rate["target"] == 1.0
    assert rate["renamed"] == 1.0  # other text, same output on both (pass; the same wrong 6)
    assert rate["changed"] == 0.0  # a failed test on doc 0, another wrong output on doc 1
    assert rate["comment"] == 1.0
    assert (found[(*key, "changed")].different, found[(*key, "changed")].target_answered) == (2, 2)
    ran = [json.loads(line) for line in (tmp_path / "cache.jsonl").read_text().splitlines()]
    assert len(ran) == 6  # target x 2 docs, renamed x 2, changed x 2; the comment-only edits never ran


def test_humaneval_programs_compare_by_the_check_verdict(tmp_path):
    found = behaviour_agreements(
        points(
            "autojudge_humaneval_chat",
            [HUMANEVAL_DOC],
            {
                "target": ["    return a + b\n"],
                "swapped": ["    return b + a\n"],
                "wrong": ["    return a - b\n"],
            },
            tmp_path,
        ),
        cache=tmp_path / "cache.jsonl",
        workers=1,
        progress=False,
    )
    assert found[("r", "autojudge_humaneval_chat", "swapped")].rate == 1.0
    assert found[("r", "autojudge_humaneval_chat", "wrong")].rate == 0.0


def test_only_programs_extracted_on_both_sides_can_behave_alike(tmp_path):
    """Two replies without a program (both fail every test) are not "the same behaviour": the figure counts
    a pair as alike only when both programs were extracted and ran, and says how many documents were not."""
    docs = [stdin_doc("6\n")] * 4
    found = behaviour_agreements(
        points(
            "autojudge_livecodebench",
            docs,
            {
                "target": ["", "", "print(int(input()) * 2)", "print(int(input()) * 2)"],
                "x": ["", "print(6)", "", "x = int(input())\nprint(x + x)"],
            },  # fmt: skip
            tmp_path,
        ),
        cache=tmp_path / "cache.jsonl",
        workers=1,
        progress=False,
    )
    x = found[("r", "autojudge_livecodebench", "x")]
    assert (x.same, x.both_blank, x.target_only, x.method_only, x.different, x.unchecked) == (
        1,
        1,
        1,
        1,
        0,
        0,
    )
    assert x.rate == 0.5 and x.target_answered == 2 and x.not_counted == 2  # never 2 of 4 "alike"
    target = found[("r", "autojudge_livecodebench", "target")]
    assert (target.same, target.both_blank, target.rate) == (2, 2, 1.0)


def test_non_code_tasks_and_sweeps_without_a_target_get_no_figure(tmp_path):
    assert (
        code_family("autojudge_gsm8k") is None and code_family("autojudge_livecodebench") == "livecodebench"
    )
    gsm = points("autojudge_gsm8k", [{"question": "?"}], {"target": ["3"], "x": ["4"]}, tmp_path)
    no_target = points("autojudge_humaneval", [HUMANEVAL_DOC], {"x": ["    return a\n"]}, tmp_path)
    assert behaviour_agreements(gsm + no_target, cache=tmp_path / "c.jsonl", progress=False) == {}


def test_docs_missing_from_the_samples_come_from_the_task_data_checked_by_doc_hash(tmp_path, caplog):
    """A sweep's samples keep only lm-eval's doc_hash: the tests are read from the task's data (HumanEval
    ships in the installed package), and a document whose hash differs is left out with a warning."""
    from autojudge_eval.benchmarks.references import doc_hash
    from autojudge_eval.harness.lm_eval_call import task_docs

    include = str(Path(__file__).resolve().parents[2] / "tasks")
    docs = task_docs("autojudge_humaneval_chat", include)[:2]
    assert docs[0]["task_id"] == "HumanEval/0"
    solutions = [d["canonical_solution"] for d in docs]

    def agreement(wrong: list[str], hashes: list[str]) -> float | None:
        run = points("autojudge_humaneval_chat", docs, {"target": solutions, "x": wrong}, tmp_path)
        lines = [json.dumps({"doc_id": i, "doc_hash": h}) + "\n" for i, h in enumerate(hashes)]
        run[0].samples.write_text("".join(lines))  # as a sweep leaves it: no doc
        run = [dataclasses.replace(p, include_path=include) for p in run]
        found = behaviour_agreements(run, cache=tmp_path / "cache.jsonl", workers=1, progress=False)
        return found[("r", "autojudge_humaneval_chat", "x")].rate

    hashes = [doc_hash(d) for d in docs]
    assert agreement(["    return False\n", "    return []\n"], hashes) == 0.0  # both docs found, both fail
    assert "differ from the task's data" not in caplog.text
    # doc 0: another text, the same behaviour; doc 1's hash is not the data's doc 1: left out
    same = ["    unused = 0\n" + solutions[0], "    return []\n"]
    assert agreement(same, [hashes[0], "0" * 32]) == 1.0
    assert "1 of 2 documents differ from the task's data" in caplog.text


@pytest.mark.parametrize("answers", ['"print(1)"', '["print(1)"]', '[["print(1)"]]'])
def test_filtered_answers_in_any_nesting_give_the_program(answers):
    from autojudge_eval.reports.behaviour import _program

    assert _program(answers) == "print(1)"
