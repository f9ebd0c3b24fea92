"""``autojudge-eval regress`` on the tiny pair and task: --update, a passing rerun, a doctored baseline that
fails with a readable diff, a missing judge that is skipped, and the committed config itself."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import tiny_models

from autojudge_eval.cli import main as cli
from autojudge_eval.errors import ConfigError
from autojudge_eval.sweeps.regress import Skip, Tolerances, compare, format_checks, load_config

REPO = Path(__file__).resolve().parents[2]
tiny_pair_dirs = tiny_models.tiny_pair_dirs
CONFIG = """[tolerances]
accuracy_abs = 0.2
agreement_abs = 0.2
accepted_per_cycle_rel = 0.10
speedup_rel = 0.95  # tiny models decode in milliseconds: their speed ratio is all noise

[run]
target = "{target}"
draft = "{draft}"
window = 4
threads = 1
include_path = "tests/test_configs"
interleave = true

[[task]]
name = "autojudge_tiny"
limit = {limit}
methods = ["target", "lossless", "autojudge"]
judge = "{judge}"
threshold = 0.5
"""


@pytest.fixture(autouse=True)
def repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def gate(tiny_pair_dirs, tmp_path_factory):
    """A config, a baseline from ``--update`` and a second, fresh run compared with it."""
    root = tmp_path_factory.mktemp("regress")
    target, draft = (p.resolve() for p in tiny_pair_dirs)
    judge = tiny_models.save_lenient_judge(root / "judge", target, draft)
    config = root / "tolerances.toml"
    config.write_text(CONFIG.format(target=target, draft=draft, judge=judge, limit=3))
    base = ["regress", "--config", str(config), "--baseline", str(root / "baseline.json")]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        assert cli.main([*base, "--update", "--out", str(root / "first")]) == 0
    return root, base


def test_update_records_every_point_with_its_command(gate):
    root, _ = gate
    baseline = json.loads((root / "baseline.json").read_text())
    assert baseline["schema"] == "autojudge-regress-baseline/1"
    points = baseline["tasks"]["autojudge_tiny"]["points"]
    assert list(points) == ["target", "lossless", "autojudge-t0.5"]
    assert points["target"]["speedup"] == 1.0 and points["target"]["accepted_per_cycle"] == 0.0
    assert points["autojudge-t0.5"]["accepted_per_cycle"] > points["lossless"]["accepted_per_cycle"] > 0
    # the thread count leads the command (after AUTOJUDGE_DATA_DIR / HF_*_OFFLINE when those are set)
    assert " lm_eval " in f" {points['lossless']['command']}"
    assert f" {points['lossless']['command']}".split(" lm_eval ")[0].endswith(" OMP_NUM_THREADS=1")
    assert baseline["slice"]["tasks"][0]["limit"] == 3 and baseline["environment"]["torch_threads"] == 1
    assert baseline["slice"]["interleave"] is True and "replay=" in points["lossless"]["command"]
    assert points["lossless"]["agreement"] == 1.0  # token-identical to target: every answer the target gave
    counts = points["lossless"]["agreement_counts"]
    assert counts["same"] == counts["target_answered"] and counts["different"] == counts["target_only"] == 0


def test_fresh_run_passes(gate, capsys):
    root, base = gate
    assert cli.main([*base, "--out", str(root / "second")]) == 0
    out = capsys.readouterr().out
    assert "regress: passed (10 checks)" in out and "FAIL" not in out
    assert [line.split()[1] for line in out.splitlines() if " same answer " in line] == [
        "lossless",
        "autojudge-t0.5",
    ]


def test_doctored_baseline_fails_with_a_readable_diff(gate, tmp_path, capsys):
    root, base = gate
    doctored = json.loads((root / "baseline.json").read_text())
    points = doctored["tasks"]["autojudge_tiny"]["points"]
    points["target"]["accuracy"] += 0.5
    points["lossless"]["accepted_per_cycle"] *= 1.5
    points["autojudge-t0.5"]["speedup"] *= 100
    points["autojudge-t0.5"]["agreement"] = (points["autojudge-t0.5"]["agreement"] or 0.0) + 0.5
    (tmp_path / "baseline.json").write_text(json.dumps(doctored))
    shutil.copytree(root / "first", tmp_path / "run")  # finished points are reused: nothing decodes again
    code = cli.main([*base[:-1], str(tmp_path / "baseline.json"), "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 1
    failed = [line.split() for line in out.splitlines() if line.endswith("FAIL  <--")]
    assert [(f[1], f[2]) for f in failed] == [
        ("target", "accuracy"), ("lossless", "accepted/cycle"), ("autojudge-t0.5", "same"), ("autojudge-t0.5", "x"),
    ]  # fmt: skip
    assert "regress: FAILED: 4 of 10 checks out of tolerance" in out


def test_default_out_is_removed_when_the_gate_passes_and_kept_when_it_fails(
    gate, tmp_path, monkeypatch, capsys
):
    root, base = gate
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    assert cli.main(base) == 0
    assert list(temp.iterdir()) == []

    doctored = json.loads((root / "baseline.json").read_text())
    doctored["tasks"]["autojudge_tiny"]["points"]["target"]["accuracy"] += 0.5
    (tmp_path / "baseline.json").write_text(json.dumps(doctored))
    assert cli.main([*base[:-1], str(tmp_path / "baseline.json")]) == 1
    (kept,) = temp.iterdir()
    assert f"sweeps are kept in {kept}" in capsys.readouterr().err


def test_missing_judge_skips_the_autojudge_point(gate, tmp_path, capsys):
    root, base = gate
    moved = tmp_path / "judge-elsewhere"
    shutil.copytree(root / "judge", moved)
    shutil.rmtree(root / "judge")
    try:
        code = cli.main([*base, "--out", str(tmp_path / "run")])
    finally:
        shutil.copytree(moved, root / "judge")
    out = capsys.readouterr().out
    assert code == 0
    assert f"note: autojudge_tiny: autojudge skipped, judge not found at {root / 'judge'}" in out
    assert any(
        line.split()[1:3] == ["autojudge-t0.5", "(not"] and "skipped" in line for line in out.splitlines()
    )
    assert not (tmp_path / "run" / "autojudge_tiny" / "autojudge-t0.5").exists()


def test_another_slice_needs_update_and_runs_nothing(gate, tmp_path, capsys, tiny_pair_dirs):
    root, _ = gate
    target, draft = (p.resolve() for p in tiny_pair_dirs)
    config = tmp_path / "tolerances.toml"
    config.write_text(CONFIG.format(target=target, draft=draft, judge=root / "judge", limit=4))
    code = cli.main(["regress", "--config", str(config), "--baseline", str(root / "baseline.json"),
                     "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "baseline was measured on another slice" in err and "'limit': 4" in err
    assert "--update" in err and not (tmp_path / "run").exists()


def test_missing_baseline_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "t.toml"
    config.write_text(CONFIG.format(target="t", draft="d", judge="j", limit=1))
    assert cli.main(["regress", "--config", str(config), "--baseline", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("autojudge-eval: error: no baseline at") and "regress --update" in err


TOL = Tolerances(accuracy_abs=0.2, agreement_abs=0.2, accepted_per_cycle_rel=0.1, speedup_rel=0.25)


def entry(**points):
    """A baseline's tasks: point -> (accuracy, accepted/cycle, speed ratio[, agreement; default 1.0])."""
    names = ("accuracy", "accepted_per_cycle", "speedup", "agreement")
    return {"t": {"points": {n: dict(zip(names, (*v, 1.0)[:4], strict=True)) for n, v in points.items()}}}


def test_compare_rules():
    tol = TOL
    base = entry(target=(0.4, 0.0, 1.0), lossless=(0.4, 2.0, 0.8), **{"autojudge-t0.5": (0.4, 3.0, 1.2)})
    same = compare(base, base, tol)
    assert [c.status for c in same] == ["ok"] * 10
    now = entry(target=(0.6, 0.0, 1.0), lossless=(0.4, 2.21, 0.59), topk=(0.4, 2.5, 0.9))
    checks = {
        (c.point, c.quantity): c.status for c in compare(base, now, tol, [Skip("t", "autojudge", "no judge")])
    }
    assert checks[("target", "accuracy")] == "ok"  # 0.2 away: on the edge, allowed
    assert checks[("lossless", "accepted/cycle")] == "FAIL"  # 10.5% away
    assert checks[("lossless", "x target")] == "FAIL"  # 0.8 -> 0.59: dropped 26%
    assert checks[("autojudge-t0.5", "(not run)")] == "skipped"
    assert checks[("topk", "(not in baseline)")] == "note"
    faster = entry(target=(0.4, 0.0, 1.0), lossless=(0.4, 2.0, 1.5), **{"autojudge-t0.5": (0.4, 3.0, 1.2)})
    statuses = {(c.point, c.quantity): c.status for c in compare(base, faster, tol)}
    assert statuses[("lossless", "x target")] == "note"  # much faster passes, with a note
    gone = compare(base, entry(target=(0.4, 0.0, 1.0)), tol)
    assert [c.status for c in gone if c.quantity == "(not run)"] == ["FAIL", "FAIL"]


def test_the_gate_checks_the_honest_agreement_not_one_that_counts_two_blanks():
    base = entry(target=(0.2, 0.0, 1.0), **{"autojudge-t0.5": (0.2, 3.0, 1.2, 0.6)})
    checks = {(c.point, c.quantity): c for c in compare(base, base, TOL)}
    assert ("target", "same answer") not in checks  # the reference itself: 1.0 by definition
    now = entry(target=(0.2, 0.0, 1.0), **{"autojudge-t0.5": (0.2, 3.0, 1.2, 0.3)})
    check = {(c.point, c.quantity): c for c in compare(base, now, TOL)}[("autojudge-t0.5", "same answer")]
    assert check.failed and (check.baseline, check.current) == (0.6, 0.3)
    lost = entry(target=(0.2, 0.0, 1.0), **{"autojudge-t0.5": (0.2, 3.0, 1.2, None)})  # target gave no answer
    assert {(c.point, c.quantity): c for c in compare(base, lost, TOL)}[
        ("autojudge-t0.5", "same answer")
    ].failed
    old = {
        "t": {
            "points": {
                n: {k: v for k, v in p.items() if k != "agreement"} for n, p in base["t"]["points"].items()
            }
        }
    }
    stale = [c for c in compare(old, base, TOL) if c.quantity == "(no same answer)"]
    assert [c.status for c in stale] == ["FAIL"] and "run --update" in format_checks(stale)


def test_measurements_record_the_breakdown_and_gate_on_its_rate():

    from autojudge_eval.sweeps.regress import measurements
    from autojudge_eval.sweeps.runs import DocSpeed, PointResult

    def point(name, mode, values):
        return PointResult(
            run_id="r", name=name, mode=mode, topk=None, threshold=None, task="t", pair="p", window=4,
            judge="none", metric="exact_match,strict-match", accuracy=0.0, stderr=0.0, speed={}, command="c",
            n_docs=4, docs={d: DocSpeed(1, 1.0) for d in range(4)},
            answers={d: json.dumps([v]) for d, v in enumerate(values)},
        )  # fmt: skip

    target = point("target", "target", ["[invalid]", "[invalid]", "3", "4"])
    judge = point("autojudge-t0.5", "autojudge", ["[invalid]", "[invalid]", "3", "[invalid]"])
    got = measurements([target, judge])["t"]["points"]["autojudge-t0.5"]
    assert got["agreement"] == 0.5  # 1 of the 2 documents where the target answered; not 3 of 4
    assert got["agreement_counts"]["both_blank"] == 2 and got["agreement_counts"]["target_only"] == 1


def test_committed_config_reads_and_names_the_default_pairs_judge_folder():
    from autojudge_eval.judging.artifact import pair_slug as slug

    config = load_config(REPO / "results" / "baseline" / "tolerances.toml")
    assert {t.name for t in config.tasks} == {"autojudge_gsm8k", "autojudge_humaneval"}
    assert config.target == "default" and config.tolerances.speedup_rel > 0
    assert config.draft == "self:default"  # pinned: a change of the default draft leaves the gate's pair
    benches = [json.loads(p.read_text()) for p in sorted((REPO / "results" / "bench").glob("*.json"))]
    pairs = {b["config"]["pair"] for b in benches if b["config"]["pair"].endswith(f"|{config.draft}")}
    assert len(pairs) == 1, pairs  # a bench of the gate's pair, which records the target's full name
    gsm8k = next(t for t in config.tasks if t.name == "autojudge_gsm8k")
    assert gsm8k.judge == f"judges/gsm8k/{slug(pairs.pop())}/DD-DT"  # train's default folder


def test_a_baseline_that_recorded_no_draft_is_read_as_the_self_draft_it_ran():
    from autojudge_eval.sweeps.regress import slice_difference

    config = load_config(REPO / "results" / "baseline" / "tolerances.toml")
    baseline = {"slice": {**config.slice(), "draft": None}}  # as baselines recorded before this change
    assert slice_difference(config, baseline) is None
    other = dataclasses.replace(config, draft="ngram")
    assert "draft: baseline 'self:default', config 'ngram'" in slice_difference(other, baseline)


def test_bad_config_names_the_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        CONFIG.format(target="t", draft="d", judge="j", limit=1).replace("window = 4", "windw = 4")
    )
    with pytest.raises(ConfigError, match="windw"):
        load_config(bad)


def test_a_shipped_judge_name_or_a_stand_in_counts_as_available_and_a_missing_path_does_not(tmp_path):
    from autojudge_eval.sweeps.regress import judge_available

    assert judge_available("gsm8k") and judge_available("livecodebench")  # resolved per pair by the backend
    assert judge_available("accept-all")
    assert judge_available(str(tmp_path))
    assert not judge_available(str(tmp_path / "absent")) and not judge_available(None)
