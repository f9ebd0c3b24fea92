"""The autojudge-eval command line on tiny models: bench runs end to end and reports every method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_models

from autojudge_eval.cli.main import main

tiny_pair_dirs = tiny_models.tiny_pair_dirs


def test_bench_json_reports_every_method(tiny_pair_dirs, data_dir, capsys):
    target, draft = tiny_pair_dirs
    args = ["bench", "--target", str(target), "--draft", str(draft), "--data", str(data_dir / "gsm8k")]
    code = main([*args, "--limit", "2", "--max-new-tokens", "12", "--threads", "1", "--json"])
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    methods = report["methods"]
    assert set(methods) == {"target", "lossless", "autojudge", "hf_generate"}
    assert methods["lossless"]["identical_to_target"] == 1.0
    assert methods["hf_generate"]["identical_to_target"] == 1.0
    assert methods["target"]["tokens_per_call"] == 1.0 and methods["target"]["accepted_per_cycle"] == 0.0
    assert methods["lossless"]["tokens_per_call"] == pytest.approx(
        1.0 + methods["lossless"]["accepted_per_cycle"], rel=0.5
    )
    assert all(m["tokens_per_s"] > 0 for m in methods.values())
    # the GSM8K answer breakdown beside token identity: lossless keeps every answer the target gave
    lossless = methods["lossless"]["answer_agreement"]
    assert lossless["same"] == lossless["target_answered"] and lossless["docs"] == 2
    assert lossless["target_only"] == lossless["method_only"] == lossless["different"] == 0
    assert "same answer [95% CI] (k/n)" in out and "both blank" in out


def test_bench_answer_breakdown_never_counts_two_blanks():
    from autojudge_eval.cli.main import format_bench
    from autojudge_eval.sweeps.bench import answer_agreement

    found = answer_agreement([None, None, "3", "5", "7"], [None, "2", "3", None, "8"])
    assert (found["both_blank"], found["target_only"], found["same"], found["method_only"], found["different"]) == (
        1, 1, 1, 1, 1,
    )  # fmt: skip
    assert found["target_answered"] == 3 and found["rate"] == pytest.approx(1 / 3)
    stats = {
        "tokens_per_s": 1.0,
        "speedup_vs_target": 1.0,
        "tokens_per_call": 1.0,
        "accuracy": 0.0,
        "prompts": 5,
    }
    report = {
        "config": {"pair": "p", "window": 4, "dtype": "float32", "device": "cpu", "torch_threads": 1,
                   "judge": "j", "threshold": 0.5},
        "methods": {"target": stats, "autojudge": {**stats, "identical_to_target": 0.0, "answer_agreement": found}},
    }  # fmt: skip
    line = next(line for line in format_bench(report).splitlines() if line.startswith("autojudge   "))
    assert "0.333 [" in line and "(1/3)" in line and " 1/5 " in line and "1/1/1" in line


def test_bench_accepts_a_draft_dtype(tiny_pair_dirs, data_dir, capsys):
    target, draft = tiny_pair_dirs
    code = main(
        ["bench", "--target", str(target), "--draft", str(draft), "--draft-dtype", "bfloat16",
         "--data", str(data_dir / "gsm8k"), "--limit", "1", "--max-new-tokens", "8", "--no-hf"]
    )  # fmt: skip
    assert code == 0
    assert "@bfloat16" in capsys.readouterr().out


def test_bench_uses_the_shipped_judge_for_the_pair(tiny_pair_dirs, data_dir, tmp_path, monkeypatch, capsys):
    from autojudge_eval.judging.artifact import pair_slug

    target, draft = (p.resolve() for p in tiny_pair_dirs)
    args = ["bench", "--target", str(target), "--draft", str(draft), "--data", str(data_dir / "gsm8k")]
    args += ["--limit", "1", "--max-new-tokens", "8", "--no-hf", "--json"]
    monkeypatch.chdir(tmp_path)
    assert main(args) == 0  # none shipped for this pair: the stand-in, said on stderr
    out, err = capsys.readouterr()
    assert "no shipped gsm8k judge" in err and "stand-in" in err
    assert json.loads(out.splitlines()[-1])["config"]["judge"].startswith("stand-in")

    folder = tmp_path / "judges" / "gsm8k" / pair_slug(f"{target}|{draft}") / "DT"
    tiny_models.save_lenient_judge(folder, target, draft, threshold=0.25)
    assert main(args) == 0
    config = json.loads(capsys.readouterr().out.splitlines()[-1])["config"]
    assert Path(config["judge"]).resolve() == folder.resolve() and config["threshold"] == 0.25


def test_bad_spec_is_a_one_line_error(capsys):
    assert main(["bench", "--target", "no such model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("autojudge-eval: error: cannot read model spec") and "Traceback" not in err
