"""The lm-eval side of the command line: speed records and totals, the console speed table, one-line errors.

``AutojudgeLM`` records one entry per request in a :class:`SpeedLog`; the totals per task go into lm-eval's
results JSON (``config.autojudge.speed``). When the backend runs inside lm-eval's own command line
(``lm_eval ...``, ``python -m lm_eval ...``, ``accelerate launch -m lm_eval ...``) it calls
:func:`attach_console`, which prints the speed table after lm-eval's results table (at exit, rank 0 only) and
shows this package's errors as one line instead of a traceback. Only this module prints.

``python -m autojudge_eval.lm_cli ARGS`` is ``lm_eval ARGS`` with the backend registered by import, for
interpreters that skip ``.pth`` files (``python -S`` / ``-I``).
"""

from __future__ import annotations

import atexit
import os
import sys
from collections import defaultdict

from .errors import AutojudgeError

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
        "tokens_per_cycle": new / calls if calls else 0.0,
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
        "tokens_per_cycle": new / calls if calls else 0.0,
        "accepted_per_cycle": sums["accepted_drafts"] / cycles if cycles else 0.0,
        "target_calls_per_token": calls / new if new else None,
        "accepted_histogram": histogram,
    }


def format_speed_table(summary: dict, backend: dict) -> str:
    """A Markdown table like lm-eval's: one row per task and request type, then totals over several tasks."""
    judge = (
        f" judge={backend.get('judge')} threshold={backend.get('threshold')}"
        if backend.get("mode") == "autojudge"
        else ""
    )
    head = (
        f"autojudge speed: mode={backend.get('mode')}{judge} window={backend.get('window')} "
        f"pair={backend.get('pair')} ({backend.get('device')}, {backend.get('dtype')})"
    )
    lines = [
        head,
        "|Task|Requests|Type|New tokens|Tokens/s|Tokens/call|Accepted/cycle|Calls/token|Mismatches taken|Wall s|",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    tasks = sorted(t for t in summary if t != "all")
    for task in tasks + ["all"]:
        for kind, t in sorted(summary[task].items()):
            if task == "all" and sum(kind in summary[name] for name in tasks) < 2:
                continue  # one task of this type: its row is the total
            if kind == "generate_until":
                per_token = (
                    "" if t["target_calls_per_token"] is None else f"{t['target_calls_per_token']:.3f}"
                )
                cells = [kind, t["new_tokens"], f"{t['tokens_per_s']:.1f}", f"{t['tokens_per_cycle']:.2f}",
                         f"{t['accepted_per_cycle']:.2f}", per_token, t["mismatches_accepted"]]  # fmt: skip
            else:
                cells = [f"{kind} (target only)", "", "", "", "", "", ""]
            lines.append(
                "|" + "|".join(str(c) for c in [task, t["requests"], *cells, f"{t['wall_time_s']:.1f}"]) + "|"
            )
    return "\n".join(lines)


def under_lm_eval_cli() -> bool:
    """True inside lm-eval's own command line (its CLI modules are loaded only there)."""
    return "lm_eval._cli" in sys.modules


def attach_console(lm) -> None:
    """Show ``AutojudgeError``s as one line, and print the speed table at exit on rank 0."""
    if not getattr(sys.excepthook, "autojudge_one_line", False):
        sys.excepthook = _one_line_errors(sys.excepthook)
    atexit.register(_print_speed_table, lm)


def _one_line_errors(previous):
    def hook(exc_type, exc, tb):
        hook.failed = True  # no speed table after a failed run
        if issubclass(exc_type, AutojudgeError):
            message = " ".join(str(exc).split("\n"))
            sys.stderr.write(f"autojudge: error: {message}\n")
        else:
            previous(exc_type, exc, tb)

    hook.autojudge_one_line, hook.failed = True, False
    return hook


def _print_speed_table(lm) -> None:
    speed = getattr(lm, "speed", None)  # absent when the constructor failed
    if getattr(sys.excepthook, "failed", False) or speed is None or not speed.records:
        return
    if lm.rank != 0 or int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return
    print()
    print(format_speed_table(lm.speed.summary(), lm.describe()))


def main() -> None:
    """``lm_eval`` with the backend registered (importing this module imported ``autojudge_eval``)."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":  # pragma: no cover
    main()
