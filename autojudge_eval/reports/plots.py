"""The report's plots (matplotlib, Agg): accuracy against the speed ratio to target-only and against
accepted draft tokens per cycle, one curve per method (and sweep), the target-only point marked. A second
row puts "same answer as target" (over the documents where the target gave one) on the y axis: for a weak target, accuracy against gold sits near zero for
every method and hides what each speed gain costs; agreement with the target-only answers shows it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

COLOURS = {"target": "black", "lossless": "tab:blue", "topk": "tab:orange", "autojudge": "tab:green"}
LINESTYLES = ("-", "--", ":", "-.")


def plot_group(rows: pd.DataFrame, png: Path, *, title: str) -> Path:
    """A 2x2 grid, 1100x880 px: accuracy (top) and same answer as target (bottom; for code, same behaviour on
    the tests when the report measured it) against the speed ratio (left) and accepted tokens per cycle
    (right). The agreement rate is the same real answer over the documents where the target gave one (two
    blanks never match; ``sweeps.runs.Agreement``). Error bars: lm-eval's stderr (accuracy), the 95% Wilson
    interval (agreement), bootstrap CI (speed). Agreement axes span 0..1; an accuracy axis spans at least 0.05. Without agreement figures (no target run), the top row alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # code tasks: behaviour on the tests, when the report measured it; else the answers' text
    behaviour = "behaviour" in rows and rows["behaviour"].notna().any()
    column = "behaviour" if behaviour else "agreement"
    with_agreement = rows[column].notna().any()
    nrows = 2 if with_agreement else 1
    fig, axes = plt.subplots(nrows, 2, figsize=(11, 4.4 * nrows), dpi=100, squeeze=False)
    panels = [("accuracy", _stderr_bars(rows), _ylabel(rows))]
    if with_agreement:
        what = (
            "same behaviour on the tests"
            if behaviour
            else "same final answer"
            if _is_gsm8k(rows)
            else "same answer"
        )
        panels.append(
            (
                column,
                _interval_bars(rows, column),
                f"{what} as target-only\n(share of docs where the target gave one)",
            )
        )
    runs = list(dict.fromkeys(rows["run"]))
    for (run, mode), curve in rows.groupby(["run", "mode"], sort=False):
        curve = curve.sort_values(["topk", "threshold"], na_position="first")
        label = mode + (f" ({run})" if len(runs) > 1 else "")
        style = {
            "color": COLOURS.get(mode, "grey"),
            "linestyle": LINESTYLES[runs.index(run) % len(LINESTYLES)],
        }
        marker = dict(marker="*", markersize=16) if mode == "target" else dict(marker="o", markersize=6)
        label = "target only" + (f" ({run})" if len(runs) > 1 else "") if mode == "target" else label
        for (y, err, _), (left, right) in zip(panels, axes, strict=True):
            for axis, x, xerr in ((left, "speedup", _xerr(curve)), (right, "accepted_per_cycle", None)):
                points = curve[curve[x].notna() & curve[y].notna()]
                if points.empty:
                    continue
                yerr = None if err is None else err.loc[points.index].T.to_numpy()  # (2, n): below, above
                spread = None if xerr is None else xerr.loc[points.index].T.to_numpy()  # (2, n): below, above
                axis.errorbar(
                    points[x], points[y], yerr=yerr, xerr=spread, label=label, capsize=3, elinewidth=0.8,
                    **style, **marker,
                )  # fmt: skip
                for i, (_, p) in enumerate(points.iterrows()):
                    note = _note(p)
                    if note:  # alternate above/below so that close points' labels do not overprint
                        axis.annotate(
                            note, (p[x], p[y]), textcoords="offset points", xytext=(4, 5 if i % 2 == 0 else -13),
                            fontsize=8,
                        )  # fmt: skip
    for (y, err, ylabel), (left, right) in zip(panels, axes, strict=True):
        # agreement: the whole 0..1 range; accuracy: its values and error bars, never a flat axis round one point
        values = pd.to_numeric(rows[y], errors="coerce")
        ends = pd.concat([values - err["low"], values + err["high"]])
        for axis in (left, right):
            axis.set_ylim(*((-0.03, 1.03) if y == column and with_agreement else _span(ends)))
        left.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
        left.set(xlabel="speed ratio to target-only (tokens/s ÷ target's, same sweep)", ylabel=ylabel)
        right.set(xlabel="accepted draft tokens per cycle", ylabel=ylabel)
        for axis in (left, right):
            axis.grid(alpha=0.3)
            if not axis.has_data():
                axis.text(
                    0.5, 0.5, "no target-only point in this sweep", ha="center", transform=axis.transAxes
                )
    handles, labels = axes[0][0].get_legend_handles_labels()
    rows = 1
    if handles:  # one legend for the grid, under the title, where it covers no point
        # as many columns as fit the figure's width (about 14 characters an inch at 8 pt, plus the marker)
        fit = int(fig.get_figwidth() * 14 // (max(len(label) for label in labels) + 6))
        ncol = max(1, min(len(handles), 6, fit))
        rows = -(-len(handles) // ncol)
        fig.legend(handles, labels, fontsize=8, loc="upper center", ncol=ncol,
                   bbox_to_anchor=(0.5, 1 - 0.45 / fig.get_figheight()), frameon=False)  # fmt: skip
    fig.suptitle(_short(title), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.55 + 0.2 * rows) / fig.get_figheight()))
    fig.savefig(png)
    plt.close(fig)
    return png


def _stderr_bars(rows: pd.DataFrame) -> pd.DataFrame:
    """lm-eval's standard error below and above each accuracy (0 where it reports none)."""
    se = pd.to_numeric(rows["stderr"], errors="coerce").fillna(0)
    return pd.DataFrame({"low": se, "high": se})


def _interval_bars(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    """Distances from each agreement rate to its 95% Wilson interval's ends (0 where there is none)."""
    rate = pd.to_numeric(rows[column], errors="coerce")
    low = (rate - pd.to_numeric(rows[f"{column}_low"], errors="coerce")).fillna(0).clip(lower=0)
    high = (pd.to_numeric(rows[f"{column}_high"], errors="coerce") - rate).fillna(0).clip(lower=0)
    return pd.DataFrame({"low": low, "high": high})


def _span(values: pd.Series, least: float = 0.05) -> tuple[float, float]:
    """y limits that show at least ``least`` of the 0..1 scale around the values, inside [-0.005, 1.005]."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    pad = max((least - (high - low)) / 2, 0.1 * (high - low), 0.005)
    low, high = max(low - pad, -0.005), min(high + pad, 1.005)
    if high - low < least:  # against an edge of the scale: grow the other way
        low, high = (low, low + least) if low <= -0.005 else (high - least, high)
    return low, high


def _is_gsm8k(rows: pd.DataFrame) -> bool:
    return str(rows["metric"].iloc[0]).startswith("exact_match")


def _xerr(curve: pd.DataFrame) -> pd.DataFrame | None:
    """Distances from each speed ratio to its interval's ends (0 where there is no interval)."""
    if curve["speedup_low"].isna().all():
        return None
    low = (curve["speedup"] - curve["speedup_low"]).fillna(0).clip(lower=0)
    high = (curve["speedup_high"] - curve["speedup"]).fillna(0).clip(lower=0)
    return pd.DataFrame({"low": low, "high": high})


def _note(p: pd.Series) -> str:
    if p["mode"] == "topk" and pd.notna(p["topk"]):
        return f"k={int(p['topk'])}"
    if p["mode"] == "autojudge" and pd.notna(p["threshold"]):
        return f"t={p['threshold']:g}"
    return ""


def _ylabel(rows: pd.DataFrame) -> str:
    metric = str(rows["metric"].iloc[0]).split(",")[0]
    return {"pass@1": "Pass@1", "exact_match": "accuracy (exact match)"}.get(metric, metric)


def _short(text: str, width: int = 120) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
