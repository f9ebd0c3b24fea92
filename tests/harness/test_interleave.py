"""Interleaved timing: one pass decodes every method per request and files the results; replay runs hand them
back to lm-eval unchanged; a rerun decodes only what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_models
from lm_eval.api.instance import Instance

from autojudge_eval.errors import ConfigError, DataError
from autojudge_eval.harness.backend import AutojudgeLM
from autojudge_eval.harness.interleave import (
    parse_method,
    parse_methods,
    point_name,
    read_outputs,
    request_key,
    rotation,
)

tiny_pair_dirs = tiny_models.tiny_pair_dirs
PROMPTS = [
    ("Question: Tom has 3 apples .", {"until": ["."], "max_gen_toks": 12}),
    ("Q: 2 + 2 =", {"max_gen_toks": 10}),
]
PROMPTS += [(f"Question {i}: a b c", {"max_gen_toks": 8 + i}) for i in range(3)]


def requests():
    return [Instance("generate_until", {}, (p, dict(k)), 0, ("t", i, 1)) for i, (p, k) in enumerate(PROMPTS)]


@pytest.fixture
def pair_and_judge(tiny_pair_dirs, tmp_path):
    target, draft = (p.resolve() for p in tiny_pair_dirs)
    tiny_models.save_lenient_judge(tmp_path / "j", target, draft)
    return str(target), str(draft), str(tmp_path / "j")


def lm(pair_and_judge, **kwargs) -> AutojudgeLM:
    target, draft, judge = pair_and_judge
    return AutojudgeLM(target=target, draft=draft, **kwargs)


def test_names_parse_and_round_trip():
    assert parse_method("topk-4") == {"mode": "topk", "topk": 4, "threshold": None}
    assert parse_method("autojudge-t0.25") == {"mode": "autojudge", "topk": None, "threshold": 0.25}
    assert parse_method("autojudge")["threshold"] is None
    assert parse_methods("lossless|topk-2") == ["lossless", "topk-2"]
    for name in ("target", "lossless", "topk-4", "autojudge", "autojudge-t0.25"):
        assert point_name(**parse_method(name)) == name
    for bad in ("sampling", "topk-", "autojudge-0.3"):
        with pytest.raises(ConfigError, match="unknown method"):
            parse_method(bad)
    with pytest.raises(ConfigError, match="twice"):
        parse_methods("lossless|lossless")
    assert [rotation(["a", "b", "c"], i)[0] for i in range(4)] == ["a", "b", "c", "a"]


def test_interleaved_pass_then_replay_equals_separate_runs(pair_and_judge, tmp_path):
    folder = tmp_path / "inter"
    _, _, judge = pair_and_judge
    passing = lm(
        pair_and_judge,
        mode="target",
        judge=judge,
        interleave="lossless|autojudge-t0.5",
        interleave_dir=str(folder),
    )
    reqs = requests()
    texts = passing.generate_until(reqs)
    assert sorted(p.name for p in folder.iterdir()) == [
        "autojudge-t0.5.jsonl",
        "lossless.jsonl",
        "target.jsonl",
    ]
    assert passing.describe()["interleaved_with"]["methods"] == ["lossless", "autojudge-t0.5"]
    # this run's own outputs are the target's, with the target's records attached for lm-eval's samples file
    assert texts == lm(pair_and_judge, mode="target").generate_until(requests())
    assert all(r.arguments[-1]["autojudge"]["mode"] == "target" for r in reqs)

    for name, direct in (
        ("lossless", {"mode": "lossless"}),
        ("autojudge-t0.5", {"judge": judge, "threshold": 0.5}),
    ):
        replay = lm(pair_and_judge, replay=str(folder / f"{name}.jsonl"), **direct)
        replay.pair.generate = None  # replay must not decode
        got = replay.generate_until(requests())
        assert got == lm(pair_and_judge, **direct).generate_until(requests())
        stored = read_outputs(folder / f"{name}.jsonl")
        assert [stored[request_key(p, k)][1] for p, k in PROMPTS] == [r[2] for r in replay.speed.records]
        assert replay.describe()["speed_from"].startswith("interleaved pass")
    accepted = [
        rec["mismatches_accepted"] for _, rec in read_outputs(folder / "autojudge-t0.5.jsonl").values()
    ]
    assert sum(accepted) > 0  # the lenient judge did take mismatches: the autojudge point really ran


def test_a_cut_off_pass_resumes_with_only_the_missing_requests(pair_and_judge, tmp_path):
    folder = tmp_path / "inter"
    args = dict(mode="target", interleave="lossless", interleave_dir=str(folder))
    first = lm(pair_and_judge, **args)
    first.generate_until(requests()[:2])
    with (folder / "lossless.jsonl").open("a") as f:
        f.write('{"key": "torn')  # killed while writing the third request
    again = lm(pair_and_judge, **args)
    decoded = []
    real = again.pair.generate
    again.pair.generate = lambda *a, **k: decoded.append(1) or real(*a, **k)
    texts = again.generate_until(requests())
    assert len(decoded) == 2 * (len(PROMPTS) - 2)  # two methods for each request not yet done
    assert texts == lm(pair_and_judge, mode="target").generate_until(requests())
    assert len(read_outputs(folder / "lossless.jsonl")) == len(PROMPTS)


def test_bad_interleave_and_replay_settings_are_one_line_errors(pair_and_judge, tmp_path):
    folder = tmp_path / "inter"
    lm(pair_and_judge, mode="target", interleave="lossless", interleave_dir=str(folder)).generate_until(
        requests()[:1]
    )
    cases = [
        (dict(mode="target", interleave="lossless"), ConfigError, "needs interleave_dir"),
        (dict(mode="target", interleave_dir=str(folder)), ConfigError, "needs interleave="),
        (dict(mode="lossless", replay=str(folder / "none.jsonl")), ConfigError, "replay file not found"),
        (dict(mode="topk", replay=str(folder / "lossless.jsonl")), ConfigError, "holds method lossless"),
        (dict(mode="lossless", replay=str(folder / "lossless.jsonl"), interleave="target", interleave_dir="x"),
         ConfigError, "one of the two"),
    ]  # fmt: skip
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message) as caught:
            lm(pair_and_judge, **kwargs)
        assert "\n" not in str(caught.value)
    short = lm(pair_and_judge, mode="lossless", replay=str(folder / "lossless.jsonl"))
    with pytest.raises(DataError, match="has no output for the request"):
        short.generate_until(requests())  # made for the first request only
    (folder / "lossless.jsonl").write_text(
        '{"key": 1}\n' + json.dumps({"key": "k", "text": "", "record": {}}) + "\n"
    )
    with pytest.raises(DataError, match=r"lossless.jsonl:1: not an interleaved output line"):
        read_outputs(Path(folder / "lossless.jsonl"))
