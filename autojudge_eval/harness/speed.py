"""Speed records and their totals: one entry per lm-eval request, summed per task and request type.

``AutojudgeLM`` records one entry per request in a :class:`SpeedLog`; the totals per task go into lm-eval's
results JSON (``config.autojudge.speed``). ``harness.console`` prints them under lm-eval's command line.
"""

from __future__ import annotations

from collections import defaultdict

LOGLIKELIHOOD_NOTE = "not applicable: the target scores the text exactly, without a draft"
_SUMS = ("prompt_tokens", "new_tokens", "cycles", "target_calls", "draft_calls", "accepted_drafts")


def generation_record(stats, mode: str) -> dict:
    """One generate_until request's speed, from a ``DecodeStats``: what lands in the sample log."""
    new, calls, cycles, accepted = stats.new_tokens, stats.target_calls, stats.cycles, sum(stats.accepted)
    histogram = [0] * (max(stats.accepted, default=0) + 1)
    for n in stats.accepted:
        histogram[n] += 1
    return {
        "mode": mode,
        "prompt_tokens": stats.prompt_tokens,
        "new_tokens": new,
        "cycles": cycles,
        "target_calls": calls,
        "draft_calls": stats.draft_calls,
        "accepted_drafts": accepted,
        "accepted_per_cycle": accepted / cycles if cycles else 0.0,
        "tokens_per_call": new / calls if calls else 0.0,
        "target_calls_per_token": calls / new if new else None,
        "tokens_per_s": new / stats.wall_time_s if stats.wall_time_s > 0 else 0.0,
        "wall_time_s": stats.wall_time_s,
        "mismatches_accepted": stats.mismatches_accepted,
        "accepted_histogram": histogram,  # cycles that accepted 0, 1, 2, ... draft tokens
        "stop_reason": stats.stop_reason,
    }


class SpeedLog:
    """Per-request records ``(request_type, task, record)``; :meth:`summary` adds them up per task."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict]] = []

    def add(self, request_type: str, task: str | None, record: dict) -> None:
        self.records.append((request_type, task or "?", record))

    def summary(self) -> dict:
        """``{task: {"generate_until": totals, "loglikelihood": totals, ...}}`` plus ``"all"`` across tasks."""
        out: dict = defaultdict(dict)
        for kind in {kind for kind, _, _ in self.records}:
            rows = [(task, rec) for k, task, rec in self.records if k == kind]
            for task in sorted({task for task, _ in rows}):
                out[task][kind] = _totals(kind, [rec for t, rec in rows if t == task])
            out["all"][kind] = _totals(kind, [rec for _, rec in rows])
        return dict(out)


def _totals(kind: str, records: list[dict]) -> dict:
    if kind != "generate_until":
        keys = ("requests", "tokens_scored", "target_forwards", "wall_time_s")
        return {**{k: sum(r[k] for r in records) for k in keys}, "speculation": LOGLIKELIHOOD_NOTE}
    sums = {k: sum(r[k] for r in records) for k in (*_SUMS, "mismatches_accepted")}
    wall = sum(r["wall_time_s"] for r in records)
    histogram = [0] * max((len(r["accepted_histogram"]) for r in records), default=0)
    for r in records:
        for n, count in enumerate(r["accepted_histogram"]):
            histogram[n] += count
    new, calls, cycles = sums["new_tokens"], sums["target_calls"], sums["cycles"]
    return {
        "requests": len(records),
        **sums,
        "wall_time_s": wall,
        "tokens_per_s": new / wall if wall > 0 else 0.0,
        "tokens_per_call": new / calls if calls else 0.0,
        "accepted_per_cycle": sums["accepted_drafts"] / cycles if cycles else 0.0,
        "target_calls_per_token": calls / new if new else None,
        "accepted_histogram": histogram,
    }
