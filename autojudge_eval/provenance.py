"""Where a result came from: time, command line, versions, git commit, host, device and process rank.

Every record this package writes (mined manifests, judge cards, sweep ``env.json``, bench JSON, regression
baselines) takes these facts from here, so two files never describe the same process differently.
Standard library at import time; torch is imported inside the functions that report on it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from autojudge_eval.errors import ConfigError

PROGRAM = "autojudge-eval"


def now() -> str:
    """The UTC time in ISO 8601, to the second (``2026-12-03T15:04:05+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stamp() -> str:
    """The UTC time as a folder-name stamp (``20261203-150405``)."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def command_line(argv: list[str] | None = None, program: str = PROGRAM) -> str:
    """This process's command as a shell line, ``program`` in place of ``argv[0]`` (the entry script's path)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(shlex.quote(a) for a in [program, *args])


def package_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """The versions every record carries: this package, lm-eval, torch, transformers, scikit-learn, Python."""
    import torch

    return {
        "autojudge_eval": package_version("autojudge-eval"),
        "lm_eval": package_version("lm_eval"),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "scikit_learn": package_version("scikit-learn"),
        "python": platform.python_version(),
    }


def device_name() -> str:
    """The CUDA device's name when there is one, else the CPU's model."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_model()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def provenance() -> dict:
    """Versions, git commit, host and date, as mined manifests and judge cards record them."""
    return {
        **versions(),
        "git": git_commit(),
        "machine": platform.machine(),
        "device": device_name(),
        "date": now(),
    }


def environment(
    command: str | None = None, threads: int | None = None, env_keys: tuple[str, ...] = ()
) -> dict:
    """:func:`provenance` plus what a timed run needs: command line, CPU, threads, platform, environment."""
    import torch

    return {
        "date": now(),
        "command": command or command_line(sys.argv[1:], program=sys.argv[0]),
        "git": git_commit(),
        "versions": versions(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "env": {k: os.environ[k] for k in (*env_keys, "OMP_NUM_THREADS") if os.environ.get(k)},
    }


def git_commit() -> str | None:
    """The checkout's commit (with ``+dirty`` when files changed), or None outside a git checkout.

    Looks beside the imported package first (an editable install), then in the working directory when it
    is a checkout of this project (tox and CI install a built wheel and run from the checkout).
    """
    here = Path(__file__).resolve().parent
    for where in (here, Path.cwd()):
        if where != here and not (where / "autojudge_eval" / "provenance.py").is_file():
            continue
        commit = _git_commit_at(where)
        if commit:
            return commit
    return None


def _git_commit_at(where: Path) -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if not text:
        return 0, 1
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard expects i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard {text}: need 0 <= i < n")
    return index, count


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of this process under torch.distributed / torchrun / accelerate, else (0, 1)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise ConfigError("RANK / WORLD_SIZE must be integers") from None
    if not 0 <= rank < max(world, 1):
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, max(world, 1)


def local_rank() -> int:
    """``LOCAL_RANK`` (the process's device index on its node under torchrun / accelerate), else 0."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ConfigError(f"LOCAL_RANK must be an integer, got {os.environ['LOCAL_RANK']!r}") from None
