"""``autojudge-eval report``: metrics and intervals from sweep files, Markdown/HTML/CSV, plots, and the page
as a real headless Chromium lays it out (skipped where Chromium is not installed)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiny_models

from autojudge_eval.cli import main as cli
from autojudge_eval.reports.report import bootstrap_speed, leaderboard
from autojudge_eval.sweeps.runs import DocSpeed, PointResult, agreement, growth_note, primary_metric, read_run
from autojudge_eval.sweeps.sweep import MethodPoint, SweepSpec, run_sweep

REPO = Path(__file__).resolve().parents[2]
tiny_pair_dirs = tiny_models.tiny_pair_dirs
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_dir(tiny_pair_dirs, tmp_path_factory) -> Path:
    """A finished tiny sweep of every method: target, lossless, topk at two k, autojudge at two thresholds."""
    target, draft = tiny_pair_dirs
    spec = SweepSpec(
        task="autojudge_tiny", target=str(target), draft=str(draft), judge="accept-all",
        include_path="tests/test_configs", limit=4,
    )  # fmt: skip
    points = [MethodPoint("target"), MethodPoint("lossless"), MethodPoint("topk", topk=2)]
    points += [
        MethodPoint("topk", topk=8),
        MethodPoint("autojudge", 0, 0.3),
        MethodPoint("autojudge", 0, 0.7),
    ]
    folder = tmp_path_factory.mktemp("runs") / "tiny-sweep"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        run_sweep(spec, points, folder, command="autojudge-eval sweep --task autojudge_tiny")
    return folder


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert cli.main(["report", str(run_dir.parent), "--out", str(out)]) == 0
    return out


def point(docs: dict[int, tuple[int, float]], mode: str = "lossless", run: str = "r") -> PointResult:
    speed = {
        "tokens_per_s": sum(t for t, _ in docs.values()) / sum(s for _, s in docs.values()),
        "accepted_per_cycle": 1.0,
    }
    return PointResult(
        run_id=run, name=mode, mode=mode, topk=None, threshold=None, task="t", pair="p", window=4,
        judge="none", metric="exact_match,none", accuracy=0.5, stderr=0.1, speed=speed, command="lm_eval ...",
        n_docs=len(docs), docs={d: DocSpeed(*v) for d, v in docs.items()},
    )  # fmt: skip


def test_bootstrap_intervals_are_seeded_paired_and_cover_the_estimate():
    rng = np.random.default_rng(5)
    docs = {i: (int(rng.integers(20, 200)), float(rng.uniform(1, 10))) for i in range(30)}
    target = point(docs, "target")
    faster = point({d: (n, s / 2) for d, (n, s) in docs.items()})  # every document twice as fast
    rate, ratio = bootstrap_speed(faster, target)
    assert ratio.low == pytest.approx(2.0) and ratio.high == pytest.approx(2.0)  # paired: no spread at all
    assert rate.low < faster.tokens_per_s < rate.high
    assert bootstrap_speed(faster, target) == (rate, ratio)  # seeded
    noisy = point({d: (n, s * float(rng.uniform(0.3, 0.9))) for d, (n, s) in docs.items()})
    rate, ratio = bootstrap_speed(noisy, target)
    estimate = noisy.tokens_per_s / target.tokens_per_s
    assert 1.0 < ratio.low < estimate < ratio.high
    assert bootstrap_speed(noisy, None)[1] is None  # no target: no ratio
    assert bootstrap_speed(point({0: (5, 1.0)}), target) == (None, None)  # one document: no interval


def test_primary_metric_prefers_pass_at_1_then_exact_match_first_filter():
    results = {
        "alias": "x", "exec_seconds,extract-code": 0.2, "pass@1,extract-code": 0.25,
        "pass@1_stderr,extract-code": 0.1,
    }  # fmt: skip
    assert primary_metric(results) == ("pass@1,extract-code", 0.25, 0.1)
    gsm = {
        "exact_match,strict-match": 0.4,
        "exact_match_stderr,strict-match": "N/A",
        "exact_match,flexible-extract": 0.5,
    }
    assert primary_metric(gsm) == ("exact_match,strict-match", 0.4, None)


def test_leaderboard_rows_come_from_lm_eval_files(run_dir):
    points = read_run(run_dir)
    frame = leaderboard(points)
    assert list(frame["method"]) == [
        "target",
        "lossless",
        "topk-2",
        "topk-8",
        "autojudge-t0.3",
        "autojudge-t0.7",
    ]
    results = json.loads(next((run_dir / "lossless").glob("*/results_*.json")).read_text())
    row = frame.set_index("method").loc["lossless"]
    assert row["accuracy"] == results["results"]["autojudge_tiny"]["exact_match,none"]
    assert row["stderr"] == results["results"]["autojudge_tiny"]["exact_match_stderr,none"]
    speed = results["config"]["autojudge"]["speed"]["autojudge_tiny"]["generate_until"]
    assert row["accepted_per_cycle"] == speed["accepted_per_cycle"] and row["docs"] == 4
    target = frame.set_index("method").loc["target"]
    assert target["speedup"] == 1.0
    assert row["speedup"] == pytest.approx(speed["tokens_per_s"] / target["tokens_per_s"])
    assert row["speedup_low"] <= row["speedup"] <= row["speedup_high"]
    # lossless answers what the target answers; accept-all at a low threshold follows the tiny draft
    assert target["agreement"] == 1.0 and row["agreement"] == 1.0
    assert row["agreement_same"] == row["agreement_target_answered"] == 4 and row["agreement_both_blank"] == 0
    assert 0.0 <= frame.set_index("method").loc["autojudge-t0.3"]["agreement"] <= 1.0


def answers(
    point_: PointResult, values: dict[int, str], metric: str = "exact_match,strict-match"
) -> PointResult:
    """``point_`` with these filtered answers, as ``read_samples`` keeps them (JSON of ``filtered_resps``)."""
    return dataclasses.replace(point_, metric=metric, answers={d: json.dumps([v]) for d, v in values.items()})


def test_agreement_is_a_breakdown_where_two_blanks_never_match():
    speed = {d: (1, 1.0) for d in range(9)}
    target = answers(point(speed, "target"), {
        0: "[invalid]", 1: "[invalid]",  # both blank
        2: "18", 3: "7",  # target answered, the method did not
        4: "[invalid]",  # the method answered, the target did not
        5: "3", 6: "1,200", 7: "18",  # same real answer (6: as exact match normalises it; 7: "18." is 18)
        8: "5",  # different answers
    })  # fmt: skip
    method = answers(point(speed), {
        0: "[invalid]", 1: "[invalid]", 2: "[invalid]", 3: "", 4: "9", 5: "3", 6: "1200", 7: "18.", 8: "6",
        9: "4",  # a document the target did not score: left out
    })  # fmt: skip
    found = agreement(method, target)
    assert (found.same, found.both_blank, found.target_only, found.method_only, found.different) == (
        3,
        2,
        2,
        1,
        1,
    )
    assert found.unchecked == 0 and found.docs == 9 and found.target_answered == 6 and found.not_counted == 3
    assert found.rate == 0.5  # 3 of the 6 documents where the target gave a number; never (3 + 2) / 9
    assert found.both_blank_share == pytest.approx(2 / 9)
    low, high = found.interval
    assert low == pytest.approx(0.1876, abs=1e-4) and high == pytest.approx(
        0.8124, abs=1e-4
    )  # Wilson, z 1.96
    assert found.headline() == "0.500 [0.188, 0.812] (3/6)"
    row = found.as_dict()
    assert row == {
        "same": 3, "both_blank": 2, "target_only": 2, "method_only": 1, "different": 1, "unchecked": 0,
        "docs": 9, "target_answered": 6, "rate": 0.5, "rate_low": low, "rate_high": high,
        "both_blank_share": pytest.approx(2 / 9),
    }  # fmt: skip
    # code tasks compare the extracted program's text: "" is no program, and two of them do not agree
    code = agreement(answers(method, {0: "", 1: "x = 1", 2: "y"}, "pass@1,extract-code"),
                     answers(target, {0: "", 1: "x = 1", 2: "y = 2"}, "pass@1,extract-code"))  # fmt: skip
    assert (code.same, code.both_blank, code.different, code.rate) == (1, 1, 1, 0.5)
    assert agreement(method, None) is None
    blank = agreement(method, answers(target, dict.fromkeys(range(9), "[invalid]")))
    assert blank.rate is None and blank.interval is None and blank.headline() == "n/a (0/0)"


def test_wilson_interval_stays_inside_0_1_at_the_ends():
    from autojudge_eval.sweeps.runs import wilson_interval

    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)


def test_leaderboard_shows_the_honest_figure_with_its_count_and_the_blanks_beside_it():
    from autojudge_eval.reports.report import display_table

    speed = {d: (1, 1.0) for d in range(4)}
    target = answers(point(speed, "target"), {0: "[invalid]", 1: "[invalid]", 2: "3", 3: "4"})
    method = answers(point(speed), {0: "[invalid]", 1: "[invalid]", 2: "3", 3: "[invalid]"})
    frame = leaderboard([target, method])
    row = frame.set_index("mode").loc["lossless"]
    assert row["agreement"] == 0.5 and row["agreement_both_blank"] == 2 and row["agreement_target_only"] == 1
    table = display_table(frame).set_index("method")
    cell = table.loc["lossless", "same answer as target [95% CI] (k/n)"]
    assert cell.startswith("0.500 [") and cell.endswith("(1/2)")  # the old figure would have been 3/4
    assert table.loc["lossless", "both blank"] == "0.500 (2)"
    assert table.loc["lossless", "target only / method only / different"] == "1 / 0 / 0"


def test_report_files(report, run_dir):
    md = (report / "leaderboard.md").read_text()
    csv = pd.read_csv(report / "leaderboard.csv")
    assert len(csv) == 6 and set(csv["task"]) == {"autojudge_tiny"}
    png = re.search(r"!\[autojudge_tiny\]\((leaderboard-autojudge_tiny-[0-9a-f]{8}\.png)\)", md).group(1)
    assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        "| method | accuracy ± se | same answer as target [95% CI] (k/n) | both blank "
        "| target only / method only / different | × target [95% CI] |"
    ) in md
    assert md.startswith(
        "# Leaderboard\n\n**Decoding methods against the target model decoding alone, on autojudge_tiny"
    )
    assert "two replies without an answer are never a match" in md.split("Generated", 1)[0]
    # the environment the run needed (AUTOJUDGE_DATA_DIR, HF_*_OFFLINE when exported) comes first
    commands = re.findall(r"^\d+\. `((?:[A-Z_]+=\S+ )*lm_eval .*)`$", md, flags=re.M)
    assert len(commands) == 6 and all(f"--output_path {run_dir}/" in c for c in commands)
    assert "mode=topk,window=4,topk=8" in commands[3]
    page = (report / "leaderboard.html").read_text()
    assert page.count('src="data:image/png;base64,') == 1
    assert not re.search(r"""(src|href)=["']?(https?:|file:|//)""", page)  # self-contained
    assert page.count("<li value=") == 6 and "autojudge-t0.7" in page
    assert "Judge `accept-all`: no judge card at that path (a stand-in" in md  # the tiny sweep's stand-in


def test_a_growing_sweep_reports_its_last_complete_scoring_and_says_so(run_dir, tmp_path):
    grown = tmp_path / "runs" / "tiny-sweep"
    shutil.copytree(run_dir, grown)
    for file in grown.glob("*/point.json"):  # what a resume with a larger --limit leaves before it rescores
        record = json.loads(file.read_text())
        file.write_text(json.dumps({**record, "stale": {"limit": 4, "grown_to": None, "date": "d"}}))
    assert len(read_run(grown)) == 6
    out = tmp_path / "out"
    assert cli.main(["report", str(grown), "--out", str(out)]) == 0
    md = (out / "leaderboard.md").read_text()
    assert "growing its --limit from 4 to all: shown is its last complete scoring, at limit 4" in md
    assert len(pd.read_csv(out / "leaderboard.csv")) == 6

    record = json.loads((grown / "target" / "point.json").read_text())
    del record["stale"]  # target scored anew: the stale points are not mixed with it
    (grown / "target" / "point.json").write_text(json.dumps(record))
    assert [p.name for p in read_run(grown)] == ["target"]
    assert "being scored again" in growth_note(grown) and growth_note(run_dir) is None


def test_plot_adds_an_agreement_row_only_when_a_target_point_gives_one(run_dir, tmp_path):
    from autojudge_eval.reports.plots import _interval_bars, _span, plot_group

    frame = leaderboard(read_run(run_dir))
    assert frame["agreement"].notna().all() and (frame.loc[frame["mode"] == "target", "agreement"] == 1).all()
    both = plot_group(frame, tmp_path / "both.png", title="t")
    alone = plot_group(frame.assign(agreement=None), tmp_path / "alone.png", title="t")

    def size(png: Path) -> tuple[int, int]:  # width, height from the PNG's IHDR chunk
        head = png.read_bytes()[16:24]
        return int.from_bytes(head[:4], "big"), int.from_bytes(head[4:], "big")

    assert size(both) == (1100, 880) and size(alone) == (1100, 440)
    bars = _interval_bars(frame, "agreement")  # the Wilson interval's distances below and above the rate
    assert ((bars["low"] >= 0) & (bars["high"] >= 0)).all()
    assert (bars["low"] == frame["agreement"] - frame["agreement_low"]).all()
    # one point (HumanEval: target and lossless both at 1.0) gets a readable axis, not a flat one round it
    assert _span(pd.Series([1.0, 1.0])) == (pytest.approx(0.955), 1.005)
    low, high = _span(pd.Series([0.002, 0.012]))
    assert low == -0.005 and high == pytest.approx(0.045)  # GSM8K's accuracy: a readable 0..0.05


def test_judge_notes_come_from_the_card_and_mark_the_sweeps_thresholds(tmp_path):
    from autojudge_eval.reports.report import judge_notes

    folder = next((REPO / "judges" / "gsm8k").glob("*/DD-DT"))  # the shipped GSM8K judge's card
    card = json.loads((folder / "judge.json").read_text())
    t95 = card["thresholds"]["0.95"]
    rows = pd.DataFrame({
        "mode": ["target", "autojudge", "autojudge"], "judge": ["none", str(folder), str(folder)],
        "threshold": [None, round(t95["threshold"], 4), 0.5],
    })  # fmt: skip
    (note,) = judge_notes(rows)
    data = card["data"]
    assert f"trained on {data['problems']} gsm8k problems, {data['mismatches']:,} mined mismatches" in note
    assert f"{data['important'] / data['mismatches']:.1%} of them important" in note
    assert f"would accept {1 - data['important'] / data['mismatches']:.1%} of the mined" in note
    assert f"ROC-AUC {card['metrics']['roc_auc']:.3f}" in note
    marked = f"{t95['accept_share']:.1%} at threshold {t95['threshold']:.4f} (recall of important 0.95) (in this sweep)"
    assert marked in note and note.count("(in this sweep)") == 1  # 0.5 is no card threshold
    # which labels and which agreement: the committed card predates its "labels" key, so the report states it
    assert "changes the final GSM8K number" in note and "documents where the target-only run gave one" in note


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_page_fits_a_1280px_window_in_headless_chromium(report, tmp_path):
    """Chromium lays the page out at 1280 px: nothing wider (no sideways scrolling); and a screenshot."""
    probe = tmp_path / "probe.html"
    script = "<script>document.title = 'W' + document.documentElement.scrollWidth;</script></body>"
    probe.write_text((report / "leaderboard.html").read_text().replace("</body>", script))
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000",
    ]  # fmt: skip
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    )
    width = int(re.search(r"<title>W(\d+)</title>", dom.stdout).group(1))
    assert width <= 1280
    shot = tmp_path / "page.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", probe.as_uri()], capture_output=True, timeout=120
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
