"""The backend's console under lm-eval's own command line: the speed table at exit, one-line errors.

When the backend runs inside ``lm_eval ...`` (``python -m lm_eval``, ``accelerate launch -m lm_eval``) it calls
:func:`attach_console`, which prints the speed table after lm-eval's results table (at exit, rank 0 only)
and shows this package's errors as one line instead of a traceback. It lives here, not in ``cli/``, because
lm-eval's command line, not ours, is the one running: this is the only harness module that prints.
"""

from __future__ import annotations

import atexit
import sys

from autojudge_eval.errors import AutojudgeError
from autojudge_eval.provenance import local_rank


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
                cells = [kind, t["new_tokens"], f"{t['tokens_per_s']:.1f}", f"{t['tokens_per_call']:.2f}",
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
    if lm.rank != 0 or local_rank() != 0:
        return
    print()
    print(format_speed_table(lm.speed.summary(), lm.describe()))
