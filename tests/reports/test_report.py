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
    assert 0.0 <= frame.set_index("method").loc["autojudge-t0.3"]["agreement"] <= 1.0


def test_agreement_compares_filtered_answers_doc_by_doc():
    base, other = point({0: (1, 1.0), 1: (1, 1.0), 2: (1, 1.0)}, "target"), point({0: (1, 1.0), 1: (1, 1.0)})
    base = dataclasses.replace(base, answers={0: '["3"]', 1: '["4"]', 2: '["5"]'})
    other = dataclasses.replace(other, answers={0: '["3"]', 1: '["7"]'})
    assert agreement(other, base) == 0.5  # doc 2 was not scored by the other point: left out
    assert agreement(other, None) is None


def test_report_files(report, run_dir):
    md = (report / "leaderboard.md").read_text()
    csv = pd.read_csv(report / "leaderboard.csv")
    assert len(csv) == 6 and set(csv["task"]) == {"autojudge_tiny"}
    png = re.search(r"!\[autojudge_tiny\]\((leaderboard-autojudge_tiny-[0-9a-f]{8}\.png)\)", md).group(1)
    assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| method | accuracy ± se | same answer as target | × target [95% CI] |" in md
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
    from autojudge_eval.reports.plots import _binomial_se, plot_group

    frame = leaderboard(read_run(run_dir))
    assert frame["agreement"].notna().all() and (frame.loc[frame["mode"] == "target", "agreement"] == 1).all()
    both = plot_group(frame, tmp_path / "both.png", title="t")
    alone = plot_group(frame.assign(agreement=None), tmp_path / "alone.png", title="t")

    def size(png: Path) -> tuple[int, int]:  # width, height from the PNG's IHDR chunk
        head = png.read_bytes()[16:24]
        return int.from_bytes(head[:4], "big"), int.from_bytes(head[4:], "big")

    assert size(both) == (1100, 880) and size(alone) == (1100, 440)
    se = _binomial_se(pd.Series([0.5, 1.0, None]), pd.Series([100, 4, 4]))
    assert se.iloc[0] == pytest.approx(0.05) and se.iloc[1] == 0 and pd.isna(se.iloc[2])


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
