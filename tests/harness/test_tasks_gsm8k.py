"""The GSM8K task YAMLs, run offline through lm-eval's CLI with its built-in `dummy` backend."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lm_eval
import pytest
from lm_eval.tasks._yaml_loader import load_yaml
from lm_eval.utils import apply_template

from autojudge_eval.benchmarks import gsm8k as gsm8k_data

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tasks"
OUR_TASKS = ("autojudge_gsm8k", "autojudge_gsm8k_cot")
FILTERS = ("strict-match", "flexible-extract")
STOCK_COT = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k-cot-llama.yaml"


def run_lm_eval(tasks: list[str], output: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    """``python -m lm_eval --model dummy ... --limit 3``; returns the results JSON."""
    command = [sys.executable, "-m", "lm_eval", "--model", "dummy", "--include_path", str(TASKS)]
    command += ["--tasks", ",".join(tasks), "--limit", "3", "--output_path", str(output), *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    (results_file,) = output.rglob("results_*.json")
    return json.loads(results_file.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, str]:
    """No hub, a private HF_HOME whose datasets cache holds openai/gsm8k built from the local copy."""
    hf_home = tmp_path_factory.mktemp("hf_home")
    gsm8k_data.cache_gsm8k_for_hub_id(data_dir, cache_dir=hf_home / "datasets")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "AUTOJUDGE_"))}
    python_path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env.update(
        PYTHONPATH=os.pathsep.join(python_path),
        AUTOJUDGE_DATA_DIR=str(data_dir),
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        TQDM_DISABLE="1",
    )
    return env


@pytest.fixture(scope="module")
def first_run(
    tmp_path_factory: pytest.TempPathFactory, offline_env: dict[str, str]
) -> tuple[dict[str, Any], Path]:
    output = tmp_path_factory.mktemp("first_run")
    return run_lm_eval(list(OUR_TASKS), output, offline_env, "--log_samples"), output


@pytest.fixture(scope="module")
def reference_run(
    tmp_path_factory: pytest.TempPathFactory,
    offline_env: dict[str, str],
    first_run: tuple[dict[str, Any], Path],
) -> dict[str, Any]:
    """Our tasks scored against the first run's folder, plus the stock gsm8k task from the cache."""
    env = {**offline_env, "AUTOJUDGE_REFERENCE_SAMPLES": str(first_run[1])}
    return run_lm_eval([*OUR_TASKS, "gsm8k"], tmp_path_factory.mktemp("reference_run"), env)


def test_tasks_report_exact_match_per_filter(first_run: tuple[dict[str, Any], Path]) -> None:
    results = first_run[0]
    for task in OUR_TASKS:
        scores = results["results"][task]
        for filter_name in FILTERS:
            assert 0.0 <= scores[f"exact_match,{filter_name}"] <= 1.0
        assert not any(key.startswith("agreement") for key in scores), "agreement without a reference run"
        assert results["n-samples"][task] == {"original": 1000, "effective": 3}
        assert results["versions"][task] == 1.0


def test_samples_carry_prompt_and_extracted_answers(first_run: tuple[dict[str, Any], Path]) -> None:
    (samples_file,) = first_run[1].rglob("samples_autojudge_gsm8k_2*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text(encoding="utf-8").splitlines()]
    assert sorted((s["doc_id"], s["filter"]) for s in samples) == [
        (i, f) for i in range(3) for f in sorted(FILTERS)
    ]
    first = samples[0]
    prompt, gen_kwargs = first["arguments"]["gen_args_0"]["arg_0"], first["arguments"]["gen_args_0"]["arg_1"]
    assert prompt.startswith("Solve the following math problem step by step.")
    assert gen_kwargs["do_sample"] is False and gen_kwargs["max_gen_toks"] == 400
    assert first["target"] == "18"
    assert first["filtered_resps"] == ["[invalid]"]  # the dummy model answers "lol"


def test_agreement_with_reference_run(reference_run: dict[str, Any]) -> None:
    """The dummy model never gives a number ("lol" -> [invalid]), in either run: two blanks never agree, so
    there is no document to agree on and the metric is NaN, not the 1.0 that counting blanks would give."""
    for task in OUR_TASKS:
        for filter_name in FILTERS:
            assert math.isnan(reference_run["results"][task][f"agreement,{filter_name}"])


def test_stock_gsm8k_runs_offline_from_cache(reference_run: dict[str, Any]) -> None:
    assert "exact_match,strict-match" in reference_run["results"]["gsm8k"]
    assert reference_run["n-samples"]["gsm8k"]["original"] == 1000  # the local copy, not the hub's 1319


def test_cot_task_mirrors_gsm8k_cot_llama() -> None:
    ours = load_yaml(TASKS / "gsm8k" / "autojudge_gsm8k_cot.yaml", resolve_func=False)
    stock = load_yaml(STOCK_COT, resolve_func=False)
    for key in (
        "doc_to_text",
        "doc_to_target",
        "target_delimiter",
        "fewshot_config",
        "num_fewshot",
        "test_split",
    ):
        assert ours[key] == stock[key], key
    for our_filter, stock_filter in zip(ours["filter_list"], stock["filter_list"], strict=True):
        assert our_filter["name"] == stock_filter["name"]
        assert our_filter["filter"][:-1] == stock_filter["filter"]  # plus our tag step
    assert ours["generation_kwargs"]["until"] == stock["generation_kwargs"]["until"]
    assert ours["generation_kwargs"]["do_sample"] is False


def test_zero_shot_prompt_is_the_bench_prompt() -> None:
    from autojudge_eval.benchmarks.prompts import gsm8k_messages

    task = load_yaml(TASKS / "gsm8k" / "autojudge_gsm8k.yaml", resolve_func=False)
    question = "  Janet has 3 apples. How many apples does she have?\n"
    assert (
        apply_template(task["doc_to_text"], {"question": question}) == gsm8k_messages(question)[0]["content"]
    )
