"""The report's plots (matplotlib, Agg): accuracy against the speed ratio to target-only and against
accepted draft tokens per cycle, one curve per method (and sweep), the target-only point marked."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

COLOURS = {"target": "black", "lossless": "tab:blue", "topk": "tab:orange", "autojudge": "tab:green"}
LINESTYLES = ("-", "--", ":", "-.")


def plot_group(rows: pd.DataFrame, png: Path, *, title: str) -> Path:
    """Two panels side by side, 1100x440 px; error bars: lm-eval's stderr (accuracy), bootstrap CI (speed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4), dpi=100)
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
        for axis, x, xerr in ((left, "speedup", _xerr(curve)), (right, "accepted_per_cycle", None)):
            points = curve[curve[x].notna() & curve["accuracy"].notna()]
            if points.empty:
                continue
            yerr = points["stderr"].fillna(0).to_numpy() if points["stderr"].notna().any() else None
            spread = None if xerr is None else xerr.loc[points.index].T.to_numpy()  # (2, n): below, above
            axis.errorbar(
                points[x], points["accuracy"], yerr=yerr, xerr=spread, label=label, capsize=3, elinewidth=0.8,
                **style, **marker,
            )  # fmt: skip
            for _, p in points.iterrows():
                note = _note(p)
                if note:
                    axis.annotate(
                        note, (p[x], p["accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=8
                    )
    left.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
    left.set(xlabel="speed ratio to target-only (tokens/s ÷ target's, same sweep)", ylabel=_ylabel(rows))
    right.set(xlabel="accepted draft tokens per cycle", ylabel=_ylabel(rows))
    for axis in (left, right):
        axis.grid(alpha=0.3)
        if not axis.has_data():
            axis.text(0.5, 0.5, "no target-only point in this sweep", ha="center", transform=axis.transAxes)
    left.legend(fontsize=8, loc="best")
    fig.suptitle(_short(title), fontsize=11)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


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
