"""Options shared by several subcommands, and the help formatter. Imports nothing heavy."""

from __future__ import annotations

import argparse

from autojudge_eval.config import DEFAULT_THREADS, parse_threads
from autojudge_eval.errors import ConfigError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the descriptions' line breaks; add "(default: X)" to an option whose help does not give one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        given = "(default" in text or "default:" in text
        unset = action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS)
        if given or unset or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _threads(text: str) -> int:
    try:
        return parse_threads(text, "--threads")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def threads_argument(p: argparse.ArgumentParser) -> None:
    """``--threads`` of every command that decodes: the one default (config.DEFAULT_THREADS)."""
    p.add_argument(
        "--threads",
        type=_threads,
        default=None,
        help=f"torch CPU threads (default: $OMP_NUM_THREADS if set, else {DEFAULT_THREADS}; one thread "
        "decodes as fast as two on a quiet 2-core box and far faster under load)",
    )


def model_arguments(p: argparse.ArgumentParser, *, draft: bool = True, draft_dtype: bool = True) -> None:
    """``--target``, ``--draft`` (and ``--draft-dtype``), ``--device``, ``--dtype`` and ``--threads``: how every
    command that loads a pair names it."""
    p.add_argument("--target", default="default", help="'default', a hub id, a local folder or a .gguf file")
    if draft:
        p.add_argument(
            "--draft", default=None, help="draft spec; default: self:default for the default target"
        )
        if draft_dtype:
            p.add_argument(
                "--draft-dtype", default=None, help="run the draft in another dtype (e.g. bfloat16)"
            )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto")
    threads_argument(p)
