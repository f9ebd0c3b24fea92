"""The LiveCodeBench and HumanEval task YAMLs, run through lm-eval with a scripted backend.

``ScriptedLM`` answers known problems with known programs and everything else with prose, so each run has an
exact expected Pass@1. Data: ``AUTOJUDGE_DATA_DIR`` or ../shared/data (skipped when absent).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lm_eval
import pytest
import yaml
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager

from autojudge_eval.benchmarks.humaneval import load_humaneval
from autojudge_eval.benchmarks.livecodebench import build_messages, build_prompt
from autojudge_eval.errors import ConfigError, DataError
from autojudge_eval.harness import task_hooks as code_tasks
from autojudge_eval.sandbox import IsolationMode, probe_isolation

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tasks"
DATA_DIR = Path(os.environ.get("AUTOJUDGE_DATA_DIR") or REPO.parent / "shared" / "data")
STOCK_HUMANEVAL = Path(lm_eval.__file__).parent / "tasks" / "humaneval" / "humaneval.yaml"
FILTER = "extract-code"
JUNK = "I am not sure how to solve this."
NINE_BY_NINE = (
    "x = int(input())\nprint(sum(i * j for i in range(1, 10) for j in range(1, 10) if i * j != x))\n"
)
ZIGZAG = """class Solution:
    def zigzagTraversal(self, grid: List[List[int]]) -> List[int]:
        cells = [x for i, row in enumerate(grid) for x in (row if i % 2 == 0 else row[::-1])]
        return cells[::2]
"""


class ScriptedLM(LM):
    """Answers a request with the answer whose key occurs in its context, else with ``JUNK``."""

    tokenizer_name = "scripted"

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__()
        self.answers, self.requests = answers, []

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        self.requests += [r.arguments for r in requests]
        return [next((a for k, a in self.answers.items() if k in r.arguments[0]), JUNK) for r in requests]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("generation only")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("generation only")

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        return json.dumps(chat_history)

    def chat_template(self, chat_template: bool | str = False) -> str:
        return "json"


def evaluate(
    lm: LM, task: str, *, limit: int | None = 3, chat: bool = False, **metadata: str
) -> dict[str, Any]:
    manager = TaskManager(include_path=str(TASKS), include_defaults=False, metadata=metadata or None)
    return lm_eval.simple_evaluate(
        model=lm, tasks=[task], limit=limit, task_manager=manager, apply_chat_template=chat
    )


def scores(results: dict[str, Any], task: str) -> dict[str, float]:
    return {
        k.removesuffix(f",{FILTER}"): v for k, v in results["results"][task].items() if k.endswith(FILTER)
    }


def fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}```\nIt reads the input and prints the answer."


@pytest.fixture
def lcb_data(monkeypatch: pytest.MonkeyPatch) -> Path:
    if not (DATA_DIR / "livecodebench" / "problems.jsonl").is_file():
        pytest.skip(f"LiveCodeBench data not found under {DATA_DIR}; set AUTOJUDGE_DATA_DIR")
    monkeypatch.setenv("AUTOJUDGE_DATA_DIR", str(DATA_DIR))
    return DATA_DIR


def test_livecodebench_scores_public_and_hidden_tests(lcb_data: Path) -> None:
    first = code_tasks.load_problem_set("eval")[:3]
    assert [p.id for p in first] == ["abc387_b", "abc387_f", "abc387_a"]  # abc387_a has 40 hidden tests
    lookup = {t.input: t.expected for t in first[2].public_tests}
    public_only = f"print({lookup!r}.get(input().strip(), 0))\n"  # right on the samples, wrong otherwise
    lm = ScriptedLM({first[0].content: fenced(NINE_BY_NINE), first[2].content: fenced(public_only)})
    results = evaluate(lm, "autojudge_livecodebench")
    got = scores(results, "autojudge_livecodebench")
    assert got["pass@1"] == pytest.approx(1 / 3)
    assert got["pass@1_public"] == pytest.approx(2 / 3)
    assert got["problems_with_hidden_tests"] == 1.0
    assert 0.0 < got["exec_seconds"] < 10.0
    assert got["isolated"] == float(probe_isolation() is not IsolationMode.RLIMITS_ONLY)
    assert results["n-samples"]["autojudge_livecodebench"] == {"original": 293, "effective": 3}
    sample = results["samples"]["autojudge_livecodebench"][0]
    assert sample["filtered_resps"] == [NINE_BY_NINE.rstrip("\n")] and sample["filter"] == FILTER
    context, gen_kwargs = lm.requests[0]
    assert context.endswith(build_prompt(first[0])) and gen_kwargs["max_gen_toks"] == 1024


def test_livecodebench_metadata_filters_chat_prompt_and_functional_grading(lcb_data: Path) -> None:
    window = {"release": "v6", "start_date": "2025-01-11T12:00:00", "end_date": "2025-01-11T23:59:59"}
    problems = code_tasks.load_problem_set("eval", **window)
    assert [p.id for p in problems] == ["3708", "3677", "3720", "3674"]  # one LeetCode contest
    lm = ScriptedLM({problems[0].func_name: fenced(ZIGZAG)})  # contexts are JSON here
    results = evaluate(lm, "autojudge_livecodebench", limit=None, chat=True, **window)
    got = scores(results, "autojudge_livecodebench")
    assert got["pass@1"] == got["pass@1_public"] == pytest.approx(1 / 4)
    assert got["problems_with_hidden_tests"] == 0.0
    assert results["n-samples"]["autojudge_livecodebench"]["original"] == 4
    assert results["configs"]["autojudge_livecodebench"]["metadata"]["release"] == "v6"
    for (context, _), problem in zip(lm.requests, problems, strict=True):
        assert json.loads(context) == build_messages(
            problem
        )  # LiveCodeBench's messages, starter code included


def test_livecodebench_train_slice_is_release_v1(lcb_data: Path) -> None:
    if not (lcb_data / "livecodebench" / "release_v1" / "problems.jsonl").is_file():
        pytest.skip("release_v1 data not found")
    results = evaluate(ScriptedLM({}), "autojudge_livecodebench_train", limit=2)
    assert results["n-samples"]["autojudge_livecodebench_train"] == {"original": 400, "effective": 2}
    assert scores(results, "autojudge_livecodebench_train")["pass@1"] == 0.0
    train = code_tasks.load_problem_set("train", release="release_v6")
    assert len(train) == 400 and {p.version for p in train} == {"v1"}
    evaluation = {p.id for p in code_tasks.load_problem_set("eval")}
    assert not evaluation & {p.id for p in train}
    assert max(p.contest_date for p in train) < min(
        p.contest_date for p in code_tasks.load_problem_set("eval")
    )
    with pytest.raises(ConfigError, match="selects none"):
        code_tasks.load_problem_set("train", release="v6")
    with pytest.raises(ConfigError, match="problem set"):
        code_tasks.load_problem_set("validation")


def test_data_dir_switch_and_offline_hub(
    lcb_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = (lcb_data / "livecodebench" / "problems.jsonl").read_text(encoding="utf-8").splitlines()[:2]
    (tmp_path / "livecodebench").mkdir()
    (tmp_path / "livecodebench" / "problems.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    monkeypatch.setenv("AUTOJUDGE_DATA_DIR", str(tmp_path))
    docs = code_tasks.livecodebench_for_lm_eval(problem_set="eval", version=1.0, pretrained="ignored")["test"]
    assert docs["question_id"] == ["abc387_b", "abc387_f"] and docs["prompt"][0].startswith("### Question:")
    with pytest.raises(DataError, match="no LiveCodeBench eval problems"):
        code_tasks.load_problem_set("eval", start_date="2030-01-01")

    import huggingface_hub

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.delenv("AUTOJUDGE_DATA_DIR")
    with pytest.raises(DataError, match="AUTOJUDGE_DATA_DIR"):
        code_tasks.livecodebench_for_lm_eval(problem_set="eval")


def test_humaneval_completion_task_uses_stock_stops_and_the_sandbox() -> None:
    problems = load_humaneval()[:3]
    lm = ScriptedLM({p.prompt: p.canonical_solution for p in problems[:2]})
    results = evaluate(lm, "autojudge_humaneval")
    got = scores(results, "autojudge_humaneval")
    assert got["pass@1"] == pytest.approx(2 / 3) and got["exec_seconds"] > 0.0
    assert results["n-samples"]["autojudge_humaneval"] == {"original": 164, "effective": 3}
    stock = yaml.safe_load(STOCK_HUMANEVAL.read_text(encoding="utf-8").replace("!function", ""))
    for (context, gen_kwargs), problem in zip(lm.requests, problems, strict=True):
        assert context == problem.prompt
        assert gen_kwargs["until"] == stock["generation_kwargs"]["until"]
        assert gen_kwargs["max_gen_toks"] == stock["generation_kwargs"]["max_gen_toks"]
    assert not results["configs"]["autojudge_humaneval"].get("unsafe_code")  # we sandbox: no flag needed


def test_humaneval_chat_task_takes_the_code_block_or_the_text() -> None:
    problems = load_humaneval()[:3]
    whole = fenced(problems[0].prompt + problems[0].canonical_solution)  # a reply repeating the function
    answers = {problems[0].entry_point: whole, problems[1].entry_point: problems[1].canonical_solution}
    lm = ScriptedLM({f"def {name}(": answer for name, answer in answers.items()})  # contexts are JSON here
    results = evaluate(lm, "autojudge_humaneval_chat", chat=True)
    assert scores(results, "autojudge_humaneval_chat")["pass@1"] == pytest.approx(2 / 3)
    context, gen_kwargs = lm.requests[0]
    assert json.loads(context) == [{"role": "user", "content": problems[0].prompt}]
    assert "\ndef" not in gen_kwargs["until"] and "<|im_end|>" in gen_kwargs["until"]


def test_cli_runs_the_code_tasks_with_the_dummy_backend(lcb_data: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "AUTOJUDGE_"))}
    python_path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env.update(PYTHONPATH=os.pathsep.join(python_path), AUTOJUDGE_DATA_DIR=str(lcb_data))
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    command = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "dummy",
        "--include_path",
        str(TASKS),
        "--limit",
        "2",
    ]
    command += ["--tasks", "autojudge_livecodebench,autojudge_humaneval", "--metadata", '{"release": "v5"}']
    command += ["--output_path", str(tmp_path / "out")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text(encoding="utf-8"))
    assert results["n-samples"]["autojudge_livecodebench"] == {"original": 167, "effective": 2}
    for task in ("autojudge_livecodebench", "autojudge_humaneval"):
        assert results["results"][task][f"pass@1,{FILTER}"] == 0.0  # the dummy backend answers "lol"
