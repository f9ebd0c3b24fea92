"""The autojudge-eval command line on tiny models: bench runs end to end and reports every method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_models
import torch

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


def test_bench_compares_drafts_and_reports_the_cost_curve(tiny_pair_dirs, data_dir, capsys):
    target, draft = tiny_pair_dirs
    args = [
        "bench",
        "--target",
        str(target),
        "--drafts",
        f"{draft},ngram",
        "--judge",
        "accept-all,reject-all",
    ]
    args += ["--data", str(data_dir / "gsm8k"), "--limit", "2", "--max-new-tokens", "10", "--window", "3"]
    assert main([*args, "--skip", f"autojudge@{draft}*", "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    methods = report["methods"]
    assert set(methods) == {
        "target",
        "hf_generate",
        f"lossless@{draft}",
        "lossless@ngram",
        "autojudge@ngram[accept-all]",
        "autojudge@ngram[reject-all]",
    }
    for name in (f"lossless@{draft}", "lossless@ngram", "autojudge@ngram[reject-all]", "hf_generate"):
        assert methods[name]["identical_to_target"] == 1.0, name
    phys = report["physics"]
    assert sorted(phys["target_forward_rel"], key=int) == ["1", "2", "3", "4"]  # q = 1..K+1
    assert phys["target_forward_rel"]["1"] == 1.0
    assert set(phys["drafters"]) == {str(draft), "ngram"}
    assert phys["drafters"]["ngram"]["kind"] == "lookup"
    assert all(d["draft_rel_per_token"] > 0 and d["verify_rel"] > 0 for d in phys["drafters"].values())
    assert methods["target"]["ceiling_vs_target"] == 1.0
    assert all(m["ceiling_vs_target"] > 0 for m in methods.values() if "ceiling_vs_target" in m)
    assert "per draft token" in out and "ceiling" in out


def test_bench_row_layout_twins(tiny_pair_dirs, data_dir, capsys):
    target, _ = tiny_pair_dirs
    args = ["bench", "--target", str(target), "--draft", "ngram", "--row-layout", "both", "--no-hf"]
    assert (
        main([*args, "--data", str(data_dir / "gsm8k"), "--limit", "1", "--max-new-tokens", "8", "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    methods = report["methods"]
    assert set(methods) == {"target", "lossless", "autojudge", "lossless+rowlayout", "autojudge+rowlayout"}
    assert methods["lossless+rowlayout"]["row_layout"] and not methods["lossless"]["row_layout"]
    assert methods["lossless+rowlayout"]["identical_to_target"] == 1.0
    assert set(report["physics_row_layout"]["target_forward_rel"]) == set(
        report["physics"]["target_forward_rel"]
    )


def test_bench_refuses_an_explicit_dd_judge_for_ngram_alone(tiny_pair_dirs, data_dir, tmp_path, capsys):
    from autojudge_eval.judging.artifact import Judge

    target, _ = tiny_pair_dirs
    card = {"features": "DD-DT", "target_hidden_size": 64, "draft_hidden_size": 64, "pair": f"{target}|ngram"}
    Judge(torch.zeros(128), torch.ones(128), torch.zeros(128), torch.tensor([0.0]), card=card).save(
        tmp_path / "j"
    )
    args = ["bench", "--target", str(target), "--draft", "ngram", "--judge", str(tmp_path / "j")]
    assert main([*args, "--data", str(data_dir / "gsm8k"), "--limit", "1", "--no-hf"]) == 2
    assert "proposes none" in capsys.readouterr().err


def test_bench_shows_its_untimed_warm_up(tiny_pair_dirs, data_dir, monkeypatch, capsys):
    """The warm-up generations run before the timed bar: a bar of their own says so while they run."""
    from autojudge_eval.sweeps import bench

    target, draft = tiny_pair_dirs
    bars: list[tuple[str, int]] = []
    real = bench.tqdm

    def recording(iterable, desc="", **kw):
        items = list(iterable)
        for i, item in enumerate(real(items, desc=desc, **kw)):
            bars.append((desc, i))
            yield item

    monkeypatch.setattr(bench, "tqdm", recording)
    args = ["bench", "--target", str(target), "--draft", str(draft), "--data", str(data_dir / "gsm8k")]
    assert main([*args, "--limit", "2", "--max-new-tokens", "6", "--threads", "1", "--json"]) == 0
    warm = [i for desc, i in bars if desc.startswith("warm-up")]
    assert warm == list(range(4))  # target, lossless, autojudge, hf_generate
    assert [desc for desc, _ in bars][: len(warm)] == ["warm-up (not timed)"] * len(warm)
    assert [i for desc, i in bars if desc == "bench"] == [0, 1]


def test_bench_runs_an_eagle_head_lossless(tiny_pair_dirs, data_dir, tmp_path, capsys):
    """A head saved in the public layout runs in bench beside ngram: token-identical, its cost measured."""
    from autojudge_eval.config import parse_model_spec
    from autojudge_eval.engine.eagle import EagleHead
    from autojudge_eval.engine.stack import LayerStack
    from autojudge_eval.models.eagle import head_config, save_eagle
    from autojudge_eval.models.loading import load_model

    target, _ = tiny_pair_dirs
    stack = LayerStack(load_model(parse_model_spec(str(target)), device="cpu").model)
    torch.manual_seed(0)
    head = EagleHead(head_config({}, stack), type(stack.layers[0]))
    save_eagle(tmp_path / "head", head, stack, vocab=None, card={})
    spec = f"eagle:{tmp_path / 'head'}"
    args = ["bench", "--target", str(target), "--drafts", f"ngram,{spec}", "--skip", "autojudge*", "--no-hf"]
    args += ["--data", str(data_dir / "gsm8k"), "--limit", "2", "--max-new-tokens", "10", "--window", "3"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["methods"][f"lossless@{spec}"]["identical_to_target"] == 1.0
    assert report["physics"]["drafters"][spec]["kind"] == "eagle"
    assert report["physics"]["drafters"][spec]["proposed"] == 3


def test_mine_with_an_eagle_head(tiny_pair_dirs, data_dir, tmp_path, capsys):
    """``mine --draft eagle:FOLDER`` mines GSM8K problems with the head: labels, and DD-DT features whose
    draft half is the head's hidden states."""
    from conftest import random_eagle_head

    from autojudge_eval.config import parse_model_spec
    from autojudge_eval.engine.stack import LayerStack
    from autojudge_eval.judging.training import training_data
    from autojudge_eval.mining.records import read_mined
    from autojudge_eval.models.eagle import save_eagle
    from autojudge_eval.models.loading import load_model

    target, _ = tiny_pair_dirs
    stack = LayerStack(load_model(parse_model_spec(str(target)), device="cpu").model)
    save_eagle(tmp_path / "head", random_eagle_head(stack), stack, vocab=None, card={})
    args = ["mine", "--target", str(target), "--draft", f"eagle:{tmp_path / 'head'}", "--task", "gsm8k"]
    args += ["--data", str(data_dir / "gsm8k"), "--limit", "2", "--max-new-tokens", "12"]
    assert main([*args, "--out", str(tmp_path / "mined"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["problems"] == 2 and summary["mismatches"] > 0 and summary["part_totals"]["problems"] == 2
    mined = read_mined(tmp_path / "mined")
    n = len(mined.labels)
    assert n == summary["mismatches"] and mined.manifests[0]["draft_hidden_size"] == stack.hidden_size
    assert mined.draft_hidden.shape == mined.target_hidden.shape == (n, stack.hidden_size)
    assert mined.draft_hidden.abs().sum(-1).min() > 0  # the head's states, not the empty rows of a lookup
    assert training_data(mined, "DD-DT").x.shape == (n, 2 * stack.hidden_size)
