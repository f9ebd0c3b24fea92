"""Crash-safe file writes shared by every long job: a file is either its old or its new content."""

from __future__ import annotations

import json
import os
from pathlib import Path

from autojudge_eval.errors import DataError


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a fsynced temporary file and an atomic rename."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    fsync(tmp)
    os.replace(tmp, path)


def fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def json_object(line: str, where: str) -> dict:
    """One JSONL line as a dict; a DataError naming ``where`` (file and line) when it is not one."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not valid JSON ({err.msg})") from err
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, found {type(record).__name__}")
    return record
