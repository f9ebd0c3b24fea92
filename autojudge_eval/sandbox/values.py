"""The sandbox's typed values: tests, limits, isolation modes and results. Import them from
``autojudge_eval.sandbox``."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass

from autojudge_eval.errors import ConfigError
from autojudge_eval.sandbox.common import Verdict

__all__ = [
    "DEFAULT_LIMITS",
    "ExecResult",
    "IsolationMode",
    "ProgramJob",
    "SandboxLimits",
    "TestCase",
    "TestKind",
    "TestOutcome",
]


class TestKind(str, enum.Enum):
    """STDIN: feed input, compare stdout. FUNCTIONAL: call ``Solution().<func_name>(*args)``, compare the
    JSON value (LiveCodeBench). CALL: call the function ``<func_name>(*args)`` with tagged plain values
    (``sandbox.common.encode_value``) and judge the returned value against one assertion converted from
    HumanEval's ``check`` (``{"op", "value", "tol"}``). SCRIPT: run the program as is; it passes when it
    finishes without an exception (HumanEval tests that could not be converted; code in the program's
    own process can forge this pass, which the passing outcome's detail says)."""

    __test__ = False  # not a pytest class

    STDIN = "stdin"
    FUNCTIONAL = "functional"
    SCRIPT = "script"
    CALL = "call"


class IsolationMode(str, enum.Enum):
    """NAMESPACES needs root; USER_NAMESPACE is for non-root users; RLIMITS_ONLY is the logged fallback."""

    NAMESPACES = "namespaces"
    USER_NAMESPACE = "user_namespace"
    RLIMITS_ONLY = "rlimits_only"


@dataclass(frozen=True)
class TestCase:
    __test__ = False  # not a pytest class

    input: str
    expected: str = ""
    kind: TestKind = TestKind.STDIN
    func_name: str = ""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-test CPU and wall seconds, an outer wall budget per program, and per-process resource caps."""

    cpu_seconds: float = 6.0
    wall_seconds: float = 6.0
    total_wall_seconds: float = 120.0
    address_space_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    max_processes: int = 8
    max_stdout_bytes: int = 16 << 20
    max_stderr_bytes: int = 1 << 20
    fail_fast: bool = True  # stop at the first failing test, as LiveCodeBench's grader does

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name != "fail_fast" and not value > 0:
                raise ConfigError(f"SandboxLimits.{name} must be positive, got {value!r}")


DEFAULT_LIMITS = SandboxLimits()


@dataclass(frozen=True)
class TestOutcome:
    __test__ = False

    verdict: Verdict
    detail: str = ""  # why it failed, at most DETAIL_CHARS
    output: str = ""  # normalized stdout or canonical JSON of the return value, at most OUTPUT_CHARS
    output_sha256: str = ""  # of the full normalized output
    elapsed: float = 0.0


@dataclass(frozen=True)
class ExecResult:
    outcomes: tuple[TestOutcome, ...]
    total_seconds: float
    isolation: str  # what actually applied, e.g. "netns+pidns+ipcns+mountns-ro+uid-drop+rlimits"

    @property
    def passed(self) -> bool:
        return bool(self.outcomes) and all(o.verdict is Verdict.PASSED for o in self.outcomes)

    @property
    def isolated(self) -> bool:
        """Whether the program ran inside namespaces (no network, read-only file system), not RLIMITS_ONLY."""
        return self.isolation.split("+")[0] in ("netns", "userns")

    def to_dict(self) -> dict:
        outcomes = [{**asdict(o), "verdict": o.verdict.value} for o in self.outcomes]
        return {"outcomes": outcomes, "total_seconds": self.total_seconds, "isolation": self.isolation}

    @classmethod
    def from_dict(cls, data: dict) -> ExecResult:
        outcomes = tuple(TestOutcome(**{**o, "verdict": Verdict(o["verdict"])}) for o in data["outcomes"])
        return cls(outcomes=outcomes, total_seconds=data["total_seconds"], isolation=data["isolation"])


@dataclass(frozen=True)
class ProgramJob:
    code: str
    tests: tuple[TestCase, ...]
