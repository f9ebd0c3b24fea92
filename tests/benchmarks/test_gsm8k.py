"""GSM8K loaders: local file, local folder, hub fallback errors, and the offline hub-id cache."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from autojudge_eval.benchmarks import gsm8k as gsm8k_data
from autojudge_eval.benchmarks import references as metrics
from autojudge_eval.cli import main as cli
from autojudge_eval.errors import ConfigError, DataError
from autojudge_eval.harness import task_hooks

TRAIN = [{"question": f"train question {i}?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(3)]
TEST = [
    {"question": "How many eggs?", "answer": "16 - 7 = 9\n#### 9"},
    {"question": "How far?", "answer": "#### 1,200"},
]


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    """A folder laid out like the shared data: gsm8k/{train,test}.jsonl."""
    write_jsonl(tmp_path / "data" / "gsm8k" / "train.jsonl", TRAIN)
    write_jsonl(tmp_path / "data" / "gsm8k" / "test.jsonl", TEST)
    return tmp_path / "data"


def test_load_local_file(tmp_path: Path) -> None:
    file = write_jsonl(tmp_path / "anything.jsonl", TEST)
    split = gsm8k_data.load_gsm8k("test", file)
    assert split.column_names == ["question", "answer"]
    assert split.features == gsm8k_data.GSM8K_FEATURES
    assert split.to_list() == TEST


@pytest.mark.parametrize("folder", ["data", "data/gsm8k"])
def test_load_local_folder(local_root: Path, folder: str) -> None:
    path = local_root.parent / folder
    assert gsm8k_data.load_gsm8k("train", path).to_list() == TRAIN
    assert gsm8k_data.load_gsm8k("test", str(path)).to_list() == TEST


def test_shared_data_has_the_documented_sizes(data_dir: Path) -> None:
    assert gsm8k_data.load_gsm8k("train", data_dir).num_rows == 7473
    test = gsm8k_data.load_gsm8k("test", data_dir)
    assert test.num_rows == 1000
    assert gsm8k_data.gsm8k_target(test[0]) == "18"


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    file = tmp_path / "test.jsonl"
    file.write_text(json.dumps(TEST[0]) + "\n\n" + json.dumps(TEST[1]) + "\n\n", encoding="utf-8")
    assert gsm8k_data.load_gsm8k("test", file).num_rows == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "q", "answer": ', "line 2: not valid JSON"),
        ('["q", "a"]', "line 2: expected a JSON object, found list"),
        ('{"question": "q"}', "line 2: expected a string field 'answer', found NoneType"),
        ('{"question": 3, "answer": "#### 3"}', "line 2: expected a string field 'question', found int"),
    ],
)
def test_corrupt_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    file = tmp_path / "test.jsonl"
    file.write_text(json.dumps(TEST[0]) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"test.jsonl, {message}"):
        gsm8k_data.load_gsm8k("test", file)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    file = tmp_path / "test.jsonl"
    file.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no GSM8K records"):
        gsm8k_data.load_gsm8k("test", file)


def test_missing_file_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="AUTOJUDGE_DATA_DIR") as raised:
        gsm8k_data.load_gsm8k("test", tmp_path)
    assert str(tmp_path / "gsm8k" / "test.jsonl") in str(raised.value)


def test_unknown_split_is_a_config_error(local_root: Path) -> None:
    with pytest.raises(ConfigError, match="validation"):
        gsm8k_data.load_gsm8k("validation", local_root)


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(gsm8k_data.DATA_DIR_ENV, raising=False)


def test_env_folder_is_the_default(local_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gsm8k_data.DATA_DIR_ENV, str(local_root))
    assert gsm8k_data.load_gsm8k("test").to_list() == TEST


def test_hub_is_the_default_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(
        datasets, "load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or "split"
    )
    assert gsm8k_data.load_gsm8k("test") == "split"
    assert calls == [(("openai/gsm8k", "main"), {"split": "test"})]


def test_unreachable_hub_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="AUTOJUDGE_DATA_DIR"):
        gsm8k_data.load_gsm8k("train")


def test_task_hook_reads_the_env_folder(local_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gsm8k_data.DATA_DIR_ENV, str(local_root))
    monkeypatch.delenv(metrics.REFERENCE_SAMPLES_ENV, raising=False)
    splits = task_hooks.gsm8k_for_lm_eval(task_name="autojudge_gsm8k", version=1.0, pretrained="any-model")
    assert {name: split.num_rows for name, split in splits.items()} == {"train": 3, "test": 2}
    assert splits["test"].column_names == ["question", "answer"]


def test_cache_serves_the_hub_id_offline(
    local_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    hf_home = tmp_path / "hf_home"
    with caplog.at_level(logging.WARNING, logger="autojudge_eval.benchmarks.gsm8k"):
        target = gsm8k_data.cache_gsm8k_for_hub_id(local_root, cache_dir=hf_home / "datasets")
    assert "test split has 2 of the hub's 1319 problems" in caplog.text
    assert target.is_relative_to(hf_home / "datasets" / "openai___gsm8k" / "main")
    assert gsm8k_data.cache_gsm8k_for_hub_id(local_root / "gsm8k", cache_dir=hf_home / "datasets") == target
    # the command line does the same: `autojudge-eval cache-data DIR`
    assert cli.main(["cache-data", str(local_root), "--cache-dir", str(hf_home / "datasets")]) == 0
    assert str(target) in capsys.readouterr().out

    script = (
        "import datasets, json; d = datasets.load_dataset('openai/gsm8k', 'main'); "
        "print(json.dumps({s: d[s].to_list() for s in d}))"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "AUTOJUDGE_"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"train": TRAIN, "test": TEST}


def test_cache_refuses_corrupt_data(local_root: Path, tmp_path: Path) -> None:
    (local_root / "gsm8k" / "test.jsonl").write_text("not json\n", encoding="utf-8")
    with pytest.raises(DataError, match="test.jsonl, line 1"):
        gsm8k_data.cache_gsm8k_for_hub_id(local_root, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_lm_eval_hook_needs_only_the_test_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The zero-shot tasks read test only: a local copy without train.jsonl runs (no "train missing")."""
    from autojudge_eval.harness.task_hooks import gsm8k_for_lm_eval

    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(
        '{"question": "1+1?", "answer": "so\\n#### 2"}\n', encoding="utf-8"
    )
    monkeypatch.setenv("AUTOJUDGE_DATA_DIR", str(tmp_path))
    splits = gsm8k_for_lm_eval(task_name="autojudge_gsm8k")
    assert list(splits) == ["test"] and splits["test"][0]["question"] == "1+1?"
    (tmp_path / "gsm8k" / "test.jsonl").unlink()
    with pytest.raises(DataError, match="GSM8K test split not found.*Point AUTOJUDGE_DATA_DIR at"):
        gsm8k_for_lm_eval(task_name="autojudge_gsm8k")
