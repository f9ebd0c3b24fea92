"""LiveCodeBench code generation: typed problems, the official prompt, code extraction and grading.

Rows follow the ``livecodebench/code_generation_lite`` schema. Public tests are JSON; hidden (private) tests
use upstream's encoding, base64 of zlib of a pickle holding a JSON string. That pickle is read by an
unpickler that refuses every global, so only plain data can come out of it and nothing is ever called.
Grading runs every test through ``autojudge_eval.sandbox`` with LiveCodeBench's comparison rules.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import pickle
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from enum import Enum
from pathlib import Path

from autojudge_eval.benchmarks.code_blocks import extract_code
from autojudge_eval.errors import ConfigError, DataError
from autojudge_eval.sandbox import (
    DEFAULT_LIMITS,
    ExecResult,
    ProgramJob,
    SandboxLimits,
    TestCase,
    TestKind,
    run_many,
)

__all__ = [
    "CodeProblem",
    "Difficulty",
    "GradeResult",
    "Platform",
    "TestType",
    "build_messages",
    "build_prompt",
    "decode_private_tests",
    "extract_code",
    "grade",
    "grade_many",
    "load_livecodebench",
    "parse_problem",
    "release_versions",
    "to_row",
]

HUB_DATASET = "livecodebench/code_generation_lite"
# The official generation prompt (lcb_runner/prompts/code_generation.py, generic chat template).
SYSTEM_MESSAGE = (
    "You are an expert Python programmer. You will be given a question (problem specification) and will "
    "generate a correct Python program that matches the specification and passes all tests. You will NOT "
    "return anything except for the program."
)
FORMAT_WITH_STARTER_CODE = (
    "You will use the following starter code to write the solution to the problem and enclose your code "
    "within delimiters."
)
FORMAT_WITHOUT_STARTER_CODE = (
    "Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test on "
    "the sample inputs). Enclose your code within delimiters as follows."
)
_MAX_DECODED_BYTES = 1 << 30
_LATEST_RELEASE = 6


class Platform(str, Enum):
    LEETCODE = "leetcode"
    CODEFORCES = "codeforces"
    ATCODER = "atcoder"


class Difficulty(str, Enum):
    EASY = "easy"
    MEDIUM = "medium"
    HARD = "hard"


class TestType(str, Enum):
    __test__ = False  # not a pytest class

    STDIN = "stdin"
    FUNCTIONAL = "functional"


@dataclass(frozen=True)
class CodeProblem:
    id: str
    title: str
    content: str
    platform: Platform
    difficulty: Difficulty
    contest_id: str
    contest_date: datetime
    starter_code: str
    test_type: TestType
    func_name: str  # "" for stdin problems
    public_tests: tuple[TestCase, ...]
    private_tests: tuple[TestCase, ...]
    version: str  # "v1".."v6" where known (the `_version` field, or the hub file), else ""

    def tests(self, *, include_private: bool = True) -> tuple[TestCase, ...]:
        return self.public_tests + (self.private_tests if include_private else ())


@dataclass(frozen=True)
class GradeResult:
    problem_id: str
    result: ExecResult
    used_private_tests: bool  # False: public tests only, an optimistic upper bound on the official score

    @property
    def passed(self) -> bool:
        return self.result.passed


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Rebuilds only str/bytes/int/float/bool/None/list/tuple/dict/set; any class or function is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def decode_private_tests(field: str) -> list[dict]:
    """base64 -> zlib -> restricted unpickle -> JSON string -> list of test dicts. Raises DataError."""
    try:
        compressed = base64.b64decode(field)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(compressed, _MAX_DECODED_BYTES)
        if inflater.unconsumed_tail:
            raise DataError(f"hidden tests inflate to more than {_MAX_DECODED_BYTES} bytes")
        value = _NoGlobalsUnpickler(io.BytesIO(raw)).load()
    except (binascii.Error, zlib.error, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"hidden tests are not base64/zlib/pickle of a JSON string: {exc}") from exc
    if not isinstance(value, str):
        raise DataError(f"hidden tests should unpickle to a JSON string, got {type(value).__name__}")
    return _json_tests(value)


def _json_tests(text: str) -> list[dict]:
    try:
        cases = json.loads(text)
    except ValueError as exc:
        raise DataError(f"test cases are not valid JSON: {exc}") from exc
    ok = isinstance(cases, list) and all(
        isinstance(c, dict) and all(isinstance(c.get(k), str) for k in ("input", "output", "testtype"))
        for c in cases
    )
    if not ok:
        raise DataError("test cases should be a list of {input, output, testtype} strings")
    return cases


def _decode_field(field: str | None) -> list[dict]:
    if not field:
        return []
    text = field.strip()
    return _json_tests(text) if text.startswith("[") else decode_private_tests(text)


def _to_cases(raw: list[dict], test_type: TestType, func_name: str) -> tuple[TestCase, ...]:
    kind = TestKind.FUNCTIONAL if test_type is TestType.FUNCTIONAL else TestKind.STDIN
    if any(case["testtype"] != test_type.value for case in raw):
        raise DataError(f"a test's testtype differs from the problem's ({test_type.value})")
    return tuple(TestCase(c["input"], c["output"], kind, func_name) for c in raw)


def parse_problem(row: dict, *, version: str = "") -> CodeProblem:
    """One dataset row -> CodeProblem. Raises DataError naming the problem on any missing or bad field."""
    qid = str(row.get("question_id", "?"))
    try:
        metadata = json.loads(row.get("metadata") or "{}")
        func_name = str(metadata.get("func_name") or "")
        test_type = TestType.FUNCTIONAL if func_name else TestType.STDIN
        return CodeProblem(
            id=qid,
            title=row["question_title"],
            content=row["question_content"],
            platform=Platform(row["platform"]),
            difficulty=Difficulty(row["difficulty"]),
            contest_id=str(row.get("contest_id", "")),
            contest_date=datetime.fromisoformat(row["contest_date"]),
            starter_code=row.get("starter_code") or "",
            test_type=test_type,
            func_name=func_name,
            public_tests=_to_cases(_decode_field(row["public_test_cases"]), test_type, func_name),
            private_tests=_to_cases(_decode_field(row.get("private_test_cases")), test_type, func_name),
            version=str(row.get("_version") or version),
        )
    except KeyError as exc:
        raise DataError(f"problem {qid}: missing field {exc}") from exc
    except (ValueError, TypeError, AttributeError, DataError) as exc:
        raise DataError(f"problem {qid}: {exc}") from exc


def _read_rows(path: Path, version: str = "") -> list[CodeProblem]:
    problems = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                problems.append(parse_problem(json.loads(line), version=version))
            except (ValueError, DataError) as exc:
                raise DataError(f"{path}:{number}: {exc}") from exc
    return problems


def _release_number(release: str) -> tuple[int, bool]:
    """'v5' -> (5, False): that release's additions only; 'release_v5' -> (5, True): cumulative."""
    if release == "release_latest":
        return _LATEST_RELEASE, True
    cumulative = release.startswith("release_")
    tag = release.removeprefix("release_")
    if not (tag.startswith("v") and tag[1:].isdigit() and 1 <= int(tag[1:]) <= _LATEST_RELEASE):
        raise ConfigError(
            f"unknown release {release!r}; expected 'v1'..'v6', 'release_v1'..'release_v6' or 'release_latest'"
        )
    return int(tag[1:]), cumulative


def release_versions(release: str | None) -> frozenset[str]:
    """The versions a release names: "v5" -> {"v5"} (its additions); "release_v5" -> {"v1", .., "v5"};
    None or "release_latest" -> every version."""
    number, cumulative = _release_number(release or "release_latest")
    return frozenset(f"v{n}" for n in (range(1, number + 1) if cumulative else [number]))


def _wanted_versions(release: str | None, versions: Collection[str] | None) -> frozenset[str] | None:
    """The versions to keep (None: all); ConfigError when ``release`` selects none of ``versions``."""
    if release is None and versions is None:
        return None
    wanted = release_versions(release)
    if versions is not None:
        wanted &= frozenset(versions)
    if not wanted:
        raise ConfigError(f"release {release!r} selects none of the versions {sorted(versions or ())}")
    return wanted


def _hub_problems(versions: frozenset[str]) -> list[CodeProblem]:
    """Download the versions' files from the hub (needs network); offline this raises DataError."""
    problems = []
    for number in sorted(int(v.removeprefix("v")) for v in versions):
        name = "test.jsonl" if number == 1 else f"test{number}.jsonl"
        try:
            from huggingface_hub import hf_hub_download

            local = hf_hub_download(HUB_DATASET, name, repo_type="dataset")
        except Exception as exc:  # the hub client raises many types (offline, auth, HTTP); all mean "no data"
            raise DataError(f"cannot fetch {HUB_DATASET}/{name} from the hub ({type(exc).__name__}: {exc}); "
                            "pass a local problems.jsonl instead") from exc  # fmt: skip
        problems += _read_rows(Path(local), version=f"v{number}")
    return problems


def _as_bound(value: date | datetime | str | None, *, end: bool) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ConfigError(f"bad date {value!r}; expected ISO format like 2025-01-31") from exc
        return datetime.combine(parsed.date(), time.max) if end and len(value) == 10 else parsed
    return datetime.combine(value, time.max if end else time.min)


def load_livecodebench(
    path: str | Path | None,
    *,
    release: str | None = None,
    versions: Collection[str] | None = None,
    start_date: date | datetime | str | None = None,
    end_date: date | datetime | str | None = None,
    default_version: str = "",
) -> list[CodeProblem]:
    """Problems from a ``.jsonl`` file or a directory holding ``problems.jsonl``; None reads the hub.

    ``release``: "vN" keeps the problems added in release N, "release_vN" those up to N; ``versions`` (such
    as {"v5", "v6"}) narrows that further. Locally a problem's version is its row's ``_version``, else
    ``default_version``. Dates bound ``contest_date`` inclusively; a bare date as ``end_date`` covers the day.
    """
    wanted = _wanted_versions(release, versions)
    if path is None:
        problems = _hub_problems(wanted if wanted is not None else release_versions(None))
    else:
        file = Path(path) / "problems.jsonl" if Path(path).is_dir() else Path(path)
        if not file.is_file():
            raise DataError(
                f"no LiveCodeBench problems at {file}; expected a .jsonl file or a folder with problems.jsonl"
            )
        problems = _read_rows(file, default_version)
        if wanted is not None and (unversioned := [p.id for p in problems if not p.version]):
            raise DataError(
                f"{file}: problem {unversioned[0]} has no _version field, so no release selects it"
            )
        problems = [p for p in problems if wanted is None or p.version in wanted]
    start, end = _as_bound(start_date, end=False), _as_bound(end_date, end=True)
    return [
        p
        for p in problems
        if (start is None or p.contest_date >= start) and (end is None or p.contest_date <= end)
    ]


def _cases_json(tests: Sequence[TestCase], test_type: TestType) -> str:
    return json.dumps([{"input": t.input, "output": t.expected, "testtype": test_type.value} for t in tests])


def to_row(problem: CodeProblem) -> dict[str, str]:
    """A ``code_generation_lite`` row that ``parse_problem`` reads back as an equal problem. Hidden tests are
    written as plain JSON (upstream compresses and pickles them), or "" when there are none."""
    private = _cases_json(problem.private_tests, problem.test_type) if problem.private_tests else ""
    return {
        "question_title": problem.title,
        "question_content": problem.content,
        "platform": problem.platform.value,
        "question_id": problem.id,
        "contest_id": problem.contest_id,
        "contest_date": problem.contest_date.isoformat(),
        "starter_code": problem.starter_code,
        "difficulty": problem.difficulty.value,
        "public_test_cases": _cases_json(problem.public_tests, problem.test_type),
        "private_test_cases": private,
        "metadata": json.dumps({"func_name": problem.func_name} if problem.func_name else {}),
        "_version": problem.version,
    }


def build_prompt(problem: CodeProblem) -> str:
    """The official user message (LiveCodeBench's generic template), with or without starter code."""
    prompt = f"### Question:\n{problem.content}\n\n"
    if problem.starter_code:
        prompt += f"### Format: {FORMAT_WITH_STARTER_CODE}\n```python\n{problem.starter_code}\n```\n\n"
    else:
        prompt += f"### Format: {FORMAT_WITHOUT_STARTER_CODE}\n```python\n# YOUR CODE HERE\n```\n\n"
    return prompt + "### Answer: (use the provided format with backticks)\n\n"


def build_messages(problem: CodeProblem) -> list[dict[str, str]]:
    """System + user messages, as the official runner sends them to chat models."""
    return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": build_prompt(problem)}]


def grade(
    problem: CodeProblem, code: str, limits: SandboxLimits = DEFAULT_LIMITS, *, include_private: bool = True
) -> GradeResult:
    """Run ``code`` on the problem's tests (public, then hidden ones when present and wanted)."""
    return grade_many([(problem, code)], limits, include_private=include_private, workers=1)[0]


def grade_many(
    items: Sequence[tuple[CodeProblem, str]],
    limits: SandboxLimits = DEFAULT_LIMITS,
    *,
    include_private: bool = True,
    workers: int | None = None,
) -> list[GradeResult]:
    """Grade many (problem, code) pairs through the sandbox pool; results in input order."""
    jobs = []
    for problem, code in items:
        tests = problem.tests(include_private=include_private)
        if not tests:
            raise DataError(f"problem {problem.id} has no tests to grade against")
        jobs.append(ProgramJob(code, tests))
    results = run_many(jobs, limits, workers)
    return [
        GradeResult(problem.id, result, include_private and bool(problem.private_tests))
        for (problem, _), result in zip(items, results, strict=True)
    ]
