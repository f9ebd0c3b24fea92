"""What a mining folder holds (``autojudge-eval mine-summary``), as Markdown (for a judge's README) or JSON.

Reads only the committed JSONL lines and manifests of every part (no feature shards), so it is quick on a
folder that a running ``mine`` is still filling.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from autojudge_eval.mining.records import (
    LABELS,
    MANIFEST,
    PROBLEMS,
    MismatchLabel,
    ProblemRecord,
    find_parts,
    read_committed_jsonl,
    read_manifest,
)


def summarize_mined(root: Path, top: int = 5) -> dict:
    """Counts, shares, answer lengths, time and the most frequent swaps of every part under ``root``."""
    parts = find_parts(Path(root))
    if not parts:
        from autojudge_eval.errors import DataError

        raise DataError(f"no mined data (no {MANIFEST}) under {root}")
    problems: dict[str, ProblemRecord] = {}
    labels: list[MismatchLabel] = []
    wall: float | None = 0.0
    headers = []
    for part in parts:
        manifest = read_manifest(part / MANIFEST)
        headers.append({k: manifest.get(k) for k in ("task", "pair", "label_settings", "data", "part")})
        part_wall = manifest["counts"].get("wall_seconds")
        wall = None if wall is None or part_wall is None else wall + part_wall
        fresh = read_committed_jsonl(part / PROBLEMS, manifest["problems_bytes"], ProblemRecord)
        fresh = [p for p in fresh if p.problem_id not in problems]
        keep = {p.problem_id for p in fresh}
        problems.update((p.problem_id, p) for p in fresh)
        labels += [
            x
            for x in read_committed_jsonl(part / LABELS, manifest["labels_bytes"], MismatchLabel)
            if x.problem_id in keep
        ]
    n, important = len(labels), sum(x.important for x in labels)
    swaps = Counter((x.target_piece, x.draft_piece, x.important) for x in labels)
    return {
        "folder": str(root),
        "task": headers[0]["task"],
        "pair": headers[0]["pair"],
        "label_settings": headers[0]["label_settings"],
        "parts": len(parts),
        "problems": len(problems),
        "mismatches": n,
        "important": important,
        "important_share": important / n if n else 0.0,
        "perfect_judge_accepts": (n - important) / n if n else 0.0,
        "mismatches_per_problem": n / len(problems) if problems else 0.0,
        "reference_tokens_mean": sum(p.reference_tokens for p in problems.values()) / max(len(problems), 1),
        "continuation_tokens": sum(p.continuation_tokens for p in problems.values()),
        "wall_seconds": None if wall is None else round(wall, 1),  # None: a part's writer did not record it
        "labels_per_minute": 60 * n / wall if wall else None,
        "top_swaps": [
            {"target": t, "draft": d, "important": imp, "count": c}
            for (t, d, imp), c in swaps.most_common(top)
        ],
    }


def _settings(settings: dict | None) -> str:
    """``{"max_new_tokens": 400, "criterion": "final-number"}`` as ``max_new_tokens 400, criterion final-number``."""
    return ", ".join(f"{k} {v}" for k, v in (settings or {}).items()) or "n/a"


def format_markdown(s: dict) -> str:
    rate = f"{s['labels_per_minute']:.1f} labels/min" if s["labels_per_minute"] else "n/a"
    swaps = ", ".join(
        f"`{w['target']!r}`→`{w['draft']!r}` {'important' if w['important'] else 'unimportant'} ({w['count']})"
        for w in s["top_swaps"]
    )
    rows = [
        ("task / pair", f"{s['task']} / `{s['pair']}`"),
        ("labels", _settings(s["label_settings"])),
        ("problems", f"{s['problems']:,} ({s['parts']} part{'s' if s['parts'] != 1 else ''})"),
        ("labelled mismatches", f"{s['mismatches']:,} ({s['mismatches_per_problem']:.1f} per problem)"),
        ("important", f"{s['important']:,} ({s['important_share']:.1%})"),
        (
            "a perfect judge would accept",
            f"{s['perfect_judge_accepts']:.1%} of mismatches, every outcome unchanged",
        ),
        ("reference answers", f"{s['reference_tokens_mean']:.0f} tokens on average"),
        ("target tokens generated for labels", f"{s['continuation_tokens']:,}"),
        (
            "mining wall time",
            "not recorded for every part (see the mining logs)"
            if s["wall_seconds"] is None
            else f"{s['wall_seconds'] / 3600:.2f} h, {rate}",
        ),
        ("most frequent swaps (target→draft)", swaps),
    ]
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v.replace('|', chr(92) + '|')} |" for k, v in rows)])
