"""The command line answers at once: --help imports nothing heavy, every option explains itself, threads
are one setting, and bad arguments are refused before any model loads."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from autojudge_eval.cli.main import build_parser, main
from autojudge_eval.config import DEFAULT_THREADS, parse_threads, set_threads
from autojudge_eval.errors import ConfigError, JudgeArtifactError

HEAVY = ("torch", "lm_eval", "transformers", "datasets", "pandas", "numpy", "sklearn")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_building_the_parser_imports_nothing_heavy():
    code = (
        "import sys; from autojudge_eval.cli.main import build_parser; build_parser(); "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_subcommand_has_help_a_description_and_an_example(name, capsys):
    with pytest.raises(SystemExit) as stop:
        main([name, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: autojudge-eval {name}") and "example:\n  autojudge-eval" in text.replace(
        "AUTOJUDGE_DATA_DIR=../shared/data ", ""
    )
    sub = _subcommands()[name]
    assert sub.description and len(sub.description.splitlines()) >= 3
    silent = [a.option_strings for a in sub._actions if a.option_strings and not a.help]
    assert silent == [], f"{name}: options without help: {silent}"


def test_help_for_every_subcommand_runs_as_a_command():
    for name in _subcommands():
        done = subprocess.run(
            [sys.executable, "-m", "autojudge_eval.cli.main", name, "--help"], capture_output=True, text=True
        )
        assert done.returncode == 0 and f"autojudge-eval {name}" in done.stdout, done.stderr


def test_defaults_are_shown():
    bench = _subcommands()["bench"].format_help()
    assert "answer budget per prompt, in tokens (default: 256)" in " ".join(bench.split())
    train = " ".join(_subcommands()["train"].format_help().split())
    assert "(default: 5)" in train and "(default: 0)" in train and "(default: DD-DT)" in train


def test_threads_reach_torch_and_default_to_one(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert set_threads("3") == 3 and set_threads(None) == DEFAULT_THREADS == 1
    assert seen == [3, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # torch read it at start: left as it is
    set_threads(None)
    assert seen == [3, 1]


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5", 2.0, True])
def test_bad_thread_counts_are_config_errors(bad):
    with pytest.raises(ConfigError, match="threads"):
        parse_threads(bad)


def test_bad_threads_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["mine", "--threads", "0"])
    assert stop.value.code == 2 and "--threads must be >= 1" in capsys.readouterr().err


def test_cli_threads_reach_torch(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    _no_model_load(monkeypatch)
    main(["mine", "--threads", "2", "--data", str(tmp_path / "none")])  # refused at the data, after threads
    main(["bench", "--data", str(tmp_path / "none")])
    assert seen == [2, 1]


def _no_model_load(monkeypatch):
    import autojudge_eval.models.pair as pair

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(pair, "load_pair", refuse)


def test_bad_split_data_and_judge_are_refused_before_any_model_load(monkeypatch, tmp_path, capsys):
    _no_model_load(monkeypatch)
    with pytest.raises(SystemExit):
        main(["mine", "--split", "validation"])
    assert "invalid choice: 'validation'" in capsys.readouterr().err

    assert main(["mine", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "GSM8K train split not found" in err and "Point --data at" in err and "path argument" not in err

    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "judge.json").write_text("{not json")
    (judge / "judge.safetensors").write_bytes(b"junk")
    assert main(["bench", "--judge", str(judge), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "judge card" in err and "unreadable" in err and "retrain" in err


def test_a_damaged_shipped_judge_is_restored_not_retrained(monkeypatch, tmp_path):
    from autojudge_eval.judging.artifact import load_judge

    folder = tmp_path / "judges" / "gsm8k" / "some-pair" / "DD-DT"
    folder.mkdir(parents=True)
    (folder / "judge.json").write_text("{torn")
    (folder / "judge.safetensors").write_bytes(b"junk")
    monkeypatch.chdir(tmp_path)  # ./judges is a shipped-judges root
    with pytest.raises(
        JudgeArtifactError, match="restore it: `git checkout -- judges/gsm8k/some-pair/DD-DT`"
    ):
        load_judge(folder)


def test_backend_refuses_bad_threads_and_judges_before_loading(monkeypatch, tmp_path):
    from autojudge_eval.errors import AutojudgeError
    from autojudge_eval.harness.backend import AutojudgeLM

    _no_model_load(monkeypatch)
    with pytest.raises(ConfigError, match="threads"):
        AutojudgeLM(threads="many")
    (tmp_path / "judge.json").write_text('{"format": "autojudge-judge/1", "features": "DT"}')
    (tmp_path / "judge.safetensors").write_bytes(b"junk")
    with pytest.raises(AutojudgeError, match="not a readable safetensors judge"):
        AutojudgeLM(judge=str(tmp_path))


def test_logging_adds_no_root_handler_and_one_of_ours():
    import logging

    from autojudge_eval.cli.main import _logging

    root = list(logging.getLogger().handlers)
    _logging(False)
    _logging(True)
    ours = [h for h in logging.getLogger("autojudge_eval").handlers if getattr(h, "_autojudge", False)]
    assert logging.getLogger().handlers == root and len(ours) == 1


def test_offline_only_when_data_and_models_are_local(monkeypatch, tmp_path):
    from autojudge_eval.cli.main import _offline_if_local

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "AUTOJUDGE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    args = argparse.Namespace(command="mine", target="default", draft=None, data=None)
    assert _offline_if_local(args) == []  # the data come from the hub
    hub = argparse.Namespace(command="mine", target="org/model", draft=None, data=str(tmp_path))
    assert _offline_if_local(hub) == [] and "HF_HUB_OFFLINE" not in os.environ
    stock = argparse.Namespace(command="sweep", task="gsm8k", target="default", draft=None)
    monkeypatch.setenv("AUTOJUDGE_DATA_DIR", str(tmp_path))
    assert _offline_if_local(stock) == []  # lm-eval's own task reads the hub (or its cache)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")  # set by the user: kept
    local = argparse.Namespace(command="mine", target="default", draft="self:default", data=None)
    assert _offline_if_local(local) == ["HF_HUB_OFFLINE=1"]
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "0"
