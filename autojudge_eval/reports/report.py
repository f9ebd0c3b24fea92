"""``autojudge-eval report``: leaderboards from sweep folders, as Markdown + PNGs, CSV and one HTML page.

Rows are method points (``sweeps.runs.PointResult``), grouped per task and draft/target pair. Accuracy carries
lm-eval's own standard error; speed (tokens/s, and the speed ratio to the target-only point of the same
sweep) carries a bootstrap interval over documents, seeded: documents are resampled with replacement and the
ratio of summed tokens to summed seconds recomputed, paired with the target's on the same documents.
Reports read only the files sweeps write. The HTML page embeds its plots (base64 PNG) and needs nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from autojudge_eval.errors import DataError, JudgeArtifactError
from autojudge_eval.judging.artifact import card_meanings, read_card
from autojudge_eval.provenance import now
from autojudge_eval.sweeps.runs import (
    Agreement,
    PointResult,
    agreement,
    find_runs,
    growth_note,
    read_run,
    speedup,
    target_of,
)

log = logging.getLogger(__name__)

SCHEMA = "autojudge-report/1"
BOOTSTRAP_ITERS, BOOTSTRAP_SEED, LEVEL = 2000, 0, 0.95


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def bootstrap_speed(
    point: PointResult,
    target: PointResult | None,
    *,
    iters: int = BOOTSTRAP_ITERS,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[Interval | None, Interval | None]:
    """95% intervals of (tokens/s, speed ratio to ``target``): documents resampled, paired with target's."""
    docs = sorted(point.docs)
    if len(docs) < 2:
        return None, None
    rng = np.random.default_rng(seed)
    tokens = np.array([point.docs[d].new_tokens for d in docs], dtype=float)
    seconds = np.array([point.docs[d].wall_time_s for d in docs], dtype=float)
    picks = rng.integers(0, len(docs), size=(iters, len(docs)))  # (iters, n) document indices
    rate = tokens[picks].sum(1) / np.maximum(seconds[picks].sum(1), 1e-12)
    ratio = None
    shared = [d for d in docs if target is not None and d in target.docs]
    if target is not None and len(shared) == len(docs):
        t_tokens = np.array([target.docs[d].new_tokens for d in docs], dtype=float)
        t_seconds = np.array([target.docs[d].wall_time_s for d in docs], dtype=float)
        t_rate = t_tokens[picks].sum(1) / np.maximum(t_seconds[picks].sum(1), 1e-12)
        ratio = _interval(rate / np.maximum(t_rate, 1e-12))
    return _interval(rate), ratio


def _interval(values: np.ndarray) -> Interval:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high))


def leaderboard(points: list[PointResult], behaviour: dict | None = None) -> pd.DataFrame:
    """One numeric row per point: accuracy, its stderr, speed and intervals, settings and command.
    ``behaviour``: (run, task, point) -> same behaviour as target on the tests (code tasks; see
    ``reports.behaviour``)."""
    behaviour = behaviour or {}
    rows = []
    for p in points:
        target = target_of(p, points)
        rate_ci, ratio_ci = bootstrap_speed(p, target)
        rows.append({
            "task": p.task, "pair": p.pair, "engine": p.engine, "batch_size": p.batch_size, "run": p.run_id,
            "method": p.name, "mode": p.mode,
            "topk": p.topk, "threshold": p.threshold, "window": p.window, "judge": p.judge,
            "metric": p.metric, "accuracy": p.accuracy, "stderr": p.stderr, "docs": p.n_docs,
            **_agreement_columns("agreement", agreement(p, target)),
            **_agreement_columns("behaviour", behaviour.get((p.run_id, p.task, p.name))),
            "speedup": speedup(p, target), "speedup_low": ratio_ci.low if ratio_ci else None,
            "speedup_high": ratio_ci.high if ratio_ci else None, "tokens_per_s": p.tokens_per_s,
            "tokens_per_s_low": rate_ci.low if rate_ci else None,
            "tokens_per_s_high": rate_ci.high if rate_ci else None,
            "accepted_per_cycle": p.accepted_per_cycle, "tokens_per_call": p.tokens_per_call,
            "mismatches_accepted": p.speed.get("mismatches_accepted"),
            "new_tokens": p.speed.get("new_tokens"), "command": p.command,
        })  # fmt: skip
    return pd.DataFrame(rows)


AGREEMENT_FIELDS = (
    "same",
    "both_blank",
    "target_only",
    "method_only",
    "different",
    "unchecked",
    "target_answered",
)


def _agreement_columns(prefix: str, found: Agreement | None) -> dict:
    """The CSV's columns of one agreement breakdown: ``{prefix}`` (the headline rate: same real answer over the
    documents where the target gave one), its 95% Wilson ``_low``/``_high``, every count, the both-blank share."""
    data = found.as_dict() if found is not None else {}
    return {
        prefix: data.get("rate"), f"{prefix}_low": data.get("rate_low"), f"{prefix}_high": data.get("rate_high"),
        **{f"{prefix}_{name}": data.get(name) for name in AGREEMENT_FIELDS},
        f"{prefix}_both_blank_share": data.get("both_blank_share"),
    }  # fmt: skip


def display_table(frame: pd.DataFrame, first_ref: int = 1) -> pd.DataFrame:
    """The human columns of one group's rows; ``cmd`` numbers the commands listed under the table."""
    several_runs = frame["run"].nunique() > 1
    out = pd.DataFrame({
        **({"run": frame["run"]} if several_runs else {}),
        "engine": [f"{e} · batch {b}" for e, b in zip(frame["engine"], frame["batch_size"], strict=True)],
        "method": frame["method"],
        "accuracy ± se": [_pm(a, s) for a, s in zip(frame["accuracy"], frame["stderr"], strict=True)],
        "same answer as target [95% CI] (k/n)": _agreement_cells(frame, "agreement"),
        "both blank": _blank_cells(frame, "agreement"),
        "target only / method only / different": _split_cells(frame, "agreement"),
        **(
            {
                "same behaviour as target [95% CI] (k/n)": _agreement_cells(frame, "behaviour"),
                "behaviour not compared": _uncounted_cells(frame, "behaviour"),
            }
            if frame["behaviour"].notna().any() else {}
        ),
        "× target [95% CI]": _with_ci(frame, "speedup", "{:.2f}"),
        "tokens/s [95% CI]": _with_ci(frame, "tokens_per_s", "{:.1f}"),
        "accepted/cycle": frame["accepted_per_cycle"].map("{:.2f}".format),
        "tokens/call": frame["tokens_per_call"].map("{:.2f}".format),
        "mismatches taken": frame["mismatches_accepted"].map(lambda v: "" if pd.isna(v) else str(int(v))),
        "docs": frame["docs"].astype(int),
        "cmd": [f"[{i}]" for i in range(first_ref, first_ref + len(frame))],
    })  # fmt: skip
    return out.reset_index(drop=True)


def _count(value) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _agreement_cells(frame: pd.DataFrame, prefix: str) -> list[str]:
    """``0.271 [0.223, 0.326] (76/280)`` per row: the headline rate, its interval, same / target answered."""
    cells = []
    for _, row in frame.iterrows():
        k, n = _count(row[f"{prefix}_same"]), _count(row[f"{prefix}_target_answered"])
        if n is None:
            cells.append("n/a")
        elif not n:
            cells.append(f"n/a (0/{n})")
        else:
            low, high = row[f"{prefix}_low"], row[f"{prefix}_high"]
            cells.append(f"{row[prefix]:.3f} [{low:.3f}, {high:.3f}] ({k}/{n})")
    return cells


def _blank_cells(frame: pd.DataFrame, prefix: str) -> list[str]:
    """``0.380 (190)``: the share of documents where neither side gave an answer, and their count."""
    return [
        "n/a" if _count(b) is None else f"{share:.3f} ({_count(b)})"
        for b, share in zip(frame[f"{prefix}_both_blank"], frame[f"{prefix}_both_blank_share"], strict=True)
    ]


def _split_cells(frame: pd.DataFrame, prefix: str) -> list[str]:
    cols = [frame[f"{prefix}_{name}"] for name in ("target_only", "method_only", "different")]
    return [
        "n/a" if _count(a) is None else " / ".join(str(_count(v)) for v in (a, b, c))
        for a, b, c in zip(*cols, strict=True)
    ]


def _uncounted_cells(frame: pd.DataFrame, prefix: str) -> list[str]:
    """Documents outside the behaviour figure: no program on either side (or on the target's), or not run."""
    cells = []
    for _, row in frame.iterrows():
        if _count(row[f"{prefix}_same"]) is None:
            cells.append("n/a")
            continue
        blank, mine, unrun = (
            _count(row[f"{prefix}_{n}"]) for n in ("both_blank", "method_only", "unchecked")
        )
        cells.append(f"{blank + mine + unrun} ({blank} both blank, {mine} method only, {unrun} not run)")
    return cells


def _with_ci(frame: pd.DataFrame, column: str, fmt: str) -> list[str]:
    cells = frame[[column, f"{column}_low", f"{column}_high"]].itertuples(index=False)
    return [_ci(value, low, high, fmt) for value, low, high in cells]


def _pm(value, err) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    return f"{value:.3f}" + ("" if err is None or pd.isna(err) else f" ± {err:.3f}")


def _ci(value, low, high, fmt: str) -> str:
    if value is None or pd.isna(value):
        return "no target run"
    text = fmt.format(value)
    return text if low is None or pd.isna(low) else f"{text} [{fmt.format(low)}, {fmt.format(high)}]"


def groups(frame: pd.DataFrame) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    """(task, pair) groups of the leaderboard, in first-seen order."""
    keys = list(dict.fromkeys(zip(frame["task"], frame["pair"], strict=True)))
    return [(k, frame[(frame["task"] == k[0]) & (frame["pair"] == k[1])]) for k in keys]


def write_report(
    paths: list[Path],
    out_dir: Path,
    *,
    command: str = "",
    behaviour: bool = True,
    sandbox_cache: Path | None = None,
) -> dict[str, Path]:
    """Read the sweep folders under ``paths``; write leaderboard.{md,html,csv} and one PNG per group.
    ``behaviour``: for code tasks, also run the programs that differ from the target's in the sandbox and
    report how often they behave alike on the tests (``reports.behaviour``; cached in ``sandbox.cache``)."""
    from autojudge_eval.reports.behaviour import behaviour_agreements, default_cache
    from autojudge_eval.reports.plots import plot_group

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = find_runs(paths)
    points = [p for run in runs for p in read_run(run)]
    if not points:
        raise DataError(f"no finished method points in {', '.join(map(str, runs))}; run or resume the sweeps")
    same = behaviour_agreements(points, cache=sandbox_cache or default_cache()) if behaviour else {}
    frame = leaderboard(points, same)
    frame.to_csv(out_dir / "leaderboard.csv", index=False)
    sections, ref = [], 1
    for (task, pair), rows in groups(frame):
        png = out_dir / f"leaderboard-{task}-{hashlib.sha1(pair.encode()).hexdigest()[:8]}.png"
        plot_group(rows, png, title=f"{task} — {pair}")
        sections.append(
            {
                "task": task,
                "pair": pair,
                "rows": rows,
                "table": display_table(rows, ref),
                "png": png,
                "judges": judge_notes(rows),
            }
        )
        ref += len(rows)
    meta = {
        "date": now(),
        "command": command,
        "runs": [_run_summary(r) for r in runs],
    }
    md, page = out_dir / "leaderboard.md", out_dir / "leaderboard.html"
    md.write_text(render_markdown(sections, meta))
    page.write_text(render_html(sections, meta))
    return {"markdown": md, "html": page, "csv": out_dir / "leaderboard.csv"}


def _run_summary(run: Path) -> dict:
    env = json.loads((run / "env.json").read_text()) if (run / "env.json").is_file() else {"sessions": []}
    first = env["sessions"][0] if env["sessions"] else {}
    versions = first.get("versions", {})
    sweep = json.loads((run / "sweep.json").read_text()) if (run / "sweep.json").is_file() else {}
    interleaved = bool(sweep.get("settings", {}).get("interleave"))
    return {
        "run": run.name, "path": str(run), "cpu": first.get("cpu"), "threads": first.get("torch_threads"),
        "git": first.get("git"), "date": first.get("date"), "sessions": len(env["sessions"]),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items() if v),
        "timing": "methods timed back to back per request (interleaved)" if interleaved
        else "points timed one after another",
        "growth": growth_note(run),
    }  # fmt: skip


def headline(sections: list[dict]) -> tuple[str, str]:
    """The page's two opening lines: what it shows, and how to read its agreement figures."""
    tasks = ", ".join(dict.fromkeys(s["task"] for s in sections))
    return (
        f"Decoding methods against the target model decoding alone, on {tasks}: accuracy against gold, how "
        "often each method keeps the target's own answer, and its speed ratio to target-only (same sweep).",
        '"Same answer as target" counts only documents where the target gave an answer (k/n, 95% Wilson '
        "interval); two replies without an answer are never a match, and their share is shown beside it.",
    )


def render_markdown(sections: list[dict], meta: dict) -> str:
    first, second = headline(sections)
    lines = [
        f"# Leaderboard\n\n**{first}**  \n{second}\n\nGenerated {meta['date']}"
        + (f" by `{meta['command']}`" if meta["command"] else "")
    ]
    lines += ["", "Runs:", ""] + [_run_line(r, md=True) for r in meta["runs"]]
    for s in sections:
        rows = s["rows"]
        lines += ["", f"## {s['task']} — `{s['pair']}`", "", _caption(rows), ""]
        lines += [note for j in s["judges"] for note in (j, "")]
        lines += [f"![{s['task']}]({s['png'].name})", "", markdown_table(s["table"]), "", "Commands:", ""]
        lines += [f"{i}. `{c}`" for i, c in zip(_refs(s["table"]), rows["command"], strict=True)]
    return "\n".join(lines) + "\n"


def markdown_table(table: pd.DataFrame) -> str:
    cells = [[str(c) for c in table.columns]] + [
        [str(v) for v in row] for row in table.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    lines.insert(
        1, "|" + "|".join("---" if c in ("run", "engine", "method") else "---:" for c in table.columns) + "|"
    )
    return "\n".join(lines)


def render_html(sections: list[dict], meta: dict) -> str:
    first, second = headline(sections)
    body = [
        f"<h1>Leaderboard</h1><p class=lead><strong>{html.escape(first)}</strong><br>{html.escape(second)}</p>"
    ]
    body.append(f"<p class=meta>Generated {html.escape(meta['date'])}")
    if meta["command"]:
        body.append(f" by <code>{html.escape(meta['command'])}</code>")
    body.append("</p><h3>Runs</h3><ul>" + "".join(f"<li>{_run_line(r)}</li>" for r in meta["runs"]) + "</ul>")
    for s in sections:
        image = base64.b64encode(s["png"].read_bytes()).decode()
        body.append(f"<h2>{html.escape(s['task'])} <small>{html.escape(s['pair'])}</small></h2>")
        body.append(f"<p>{html.escape(_caption(s['rows']))}</p>")
        body += [f"<p>{html.escape(j).replace('`', '')}</p>" for j in s["judges"]]
        body.append(f'<img alt="{html.escape(s["task"])} plots" src="data:image/png;base64,{image}">')
        body.append(s["table"].to_html(index=False, border=0, classes="board", escape=True))
        items = "".join(
            f"<li value={i}><code>{html.escape(c)}</code></li>"
            for i, c in zip(_refs(s["table"]), s["rows"]["command"], strict=True)
        )
        body.append(f"<h4>Commands (run from the repository root)</h4><ol class=cmds>{items}</ol>")
    return HTML_PAGE.format(body="\n".join(body))


def judge_notes(rows: pd.DataFrame) -> list[str]:
    """One sentence set per judge the autojudge rows used, from its card: what it was trained on, how well it
    separates the mined labels, what a perfect judge would accept, and what it accepts held out at the card's
    thresholds (the sweep's own thresholds marked)."""
    notes = []
    for judge in dict.fromkeys(rows.loc[rows["mode"] == "autojudge", "judge"]):
        used = {round(t, 4) for t in rows.loc[rows["judge"] == judge, "threshold"] if pd.notna(t)}
        try:
            card = read_card(judge)
        except JudgeArtifactError:
            notes.append(
                f"Judge `{judge}`: no judge card at that path (a stand-in such as accept-all, or a judge "
                "folder outside this checkout)."
            )
            continue
        data, metrics = card.get("data", {}), card.get("metrics", {})
        important = data.get("important", 0) / data["mismatches"] if data.get("mismatches") else None
        text = (
            f"Judge `{judge}` ({card.get('features')} features, C = {card.get('C')}): trained on "
            f"{data.get('problems', '?')} {card.get('task')} problems, {data.get('mismatches', 0):,} mined "
            "mismatches"
            + (f", {important:.1%} of them important" if important is not None else "")
            + f". Out-of-fold ROC-AUC {metrics.get('roc_auc', float('nan')):.3f}"
            + (
                f" (position alone: {metrics['reference_roc_auc_position_only']:.3f})"
                if "reference_roc_auc_position_only" in metrics else ""
            )
            + "."
        )  # fmt: skip
        if important is not None:
            text += f" A perfect judge would accept {1 - important:.1%} of the mined mismatches, every outcome kept."
        held = []
        for recall, entry in sorted(card.get("thresholds", {}).items(), key=lambda kv: float(kv[0])):
            mark = " (in this sweep)" if round(entry["threshold"], 4) in used else ""
            held.append(
                f"{entry['accept_share']:.1%} at threshold {entry['threshold']:.4f} "
                f"(recall of important {float(recall):.2f}){mark}"
            )
        if held:
            text += " Held out, it accepts " + "; ".join(held) + "."
        labels, meaning = card_meanings(card)
        text += f" Its {labels}; the {meaning}."
        notes.append(text)
    return notes


def _refs(table: pd.DataFrame) -> list[int]:
    return [int(c.strip("[]")) for c in table["cmd"]]


def _caption(rows: pd.DataFrame) -> str:
    metric = ", ".join(dict.fromkeys(rows["metric"]))
    docs = ", ".join(str(int(n)) for n in dict.fromkeys(rows["docs"]))
    return (
        f"Accuracy: lm-eval's {metric} ± its standard error, over {docs} documents. "
        "Same answer as target: of the documents where the target-only point gave an answer (GSM8K: a final "
        "number, compared as exact match compares them; code: an extracted program, compared as text), the "
        "share where this point gave the same one, with its 95% Wilson interval and the count k/n. Documents "
        'where neither gave an answer are never counted as agreeing: their share is the "both blank" '
        "column, beside it; the next column counts the target's answers the point lost, the answers only the "
        "point gave, and the different answers. "
        + (
            "Same behaviour as target: the same figure for behaviour on the problem's tests (per test the same "
            "verdict, and the same output when wrong, run in the sandbox fail-fast as the grader runs them; the "
            "criterion mining labels mismatches by): a pair counts as alike only when both programs were "
            'extracted and ran; "behaviour not compared" says how many documents are outside it. '
            if rows["behaviour"].notna().any()
            else ""
        )
        + "× target: tokens/s over the target-only point of the same sweep; "
        "intervals: 95% bootstrap over documents "
        f"({BOOTSTRAP_ITERS} resamples, seed {BOOTSTRAP_SEED}), paired with the target's. Window "
        + ", ".join(str(int(w)) for w in dict.fromkeys(rows["window"]))
        + "."
    )


def _run_line(r: dict, md: bool = False) -> str:
    text = (
        f"{r['run']}: {r['cpu']}, torch threads {r['threads']}, git {r['git']}, started {r['date']}"
        f" ({r['sessions']} session{'s' if r['sessions'] != 1 else ''}); {r['timing']}; {r['versions']}"
        + (f"; {r['growth']}" if r.get("growth") else "")
    )
    return f"- {text}" if md else html.escape(text)


HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>autojudge-eval leaderboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; max-width: 1180px; margin: 1.5em auto; padding: 0 1em; }}
h2 {{ margin-top: 2em; border-bottom: 1px solid #ccc; }}
h2 small {{ font-weight: normal; color: #555; font-size: 60%; overflow-wrap: anywhere; }}
img {{ max-width: 100%; height: auto; }}
table.board {{ border-collapse: collapse; font-size: 13px; margin: 0.8em 0; }}
table.board th, table.board td {{ padding: 3px 8px; border-bottom: 1px solid #e2e2e2; text-align: right; }}
table.board th {{ background: #f3f3f3; }}
table.board td:first-child, table.board th:first-child {{ text-align: left; }}
code {{ font-size: 12px; overflow-wrap: anywhere; }} ol.cmds li {{ margin: 0.3em 0; }}
p.meta {{ color: #555; }} p.lead {{ font-size: 16px; margin: 0.4em 0 1em; }}
</style></head><body>
{body}
</body></html>
"""
