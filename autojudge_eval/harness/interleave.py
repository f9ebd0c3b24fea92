"""Interleaved timing for sweeps: every method decodes each request back to back, in one process.

Speed ratios between lm-eval runs made one after another drift with the machine's load (on a shared 2-core
box by ±30%). The backend's ``interleave=`` pass decodes each request with the run's own mode *and* every
listed method, in an order that rotates from request to request, and files each method's text and speed
record in ``interleave_dir``; later lm-eval runs with ``replay=<dir>/<method>.jsonl`` return those texts
and records without decoding, so lm-eval scores every method as usual while all speeds come from the same
minutes of the same process. The files double as a per-request checkpoint: a killed pass rerun with the
same directory decodes only the requests some method still lacks.

Files: ``<dir>/<method>.jsonl``, one JSON line per request, ``{"key", "text", "record"}``; ``key`` is a hash of
the request's context and generation arguments. A torn last line (a kill mid-write) is ignored. Under data
parallelism (torchrun / accelerate launch) each rank writes ``<dir>/<method>.rank<R>of<W>.jsonl`` for the
requests lm-eval gave it; readers (a resumed pass of any size, a replay) take every file of a method.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from autojudge_eval.errors import ConfigError, DataError

METHOD_NAME = re.compile(r"^(target|lossless|topk-(?P<k>\d+)|autojudge(-t(?P<t>[0-9.eE+-]+))?)$")


def parse_method(name: str) -> dict:
    """A sweep point's name (``target``, ``lossless``, ``topk-4``, ``autojudge``, ``autojudge-t0.3``) as
    ``{"mode", "topk", "threshold"}`` (None where the name sets nothing)."""
    match = METHOD_NAME.match(name.strip())
    if not match:
        raise ConfigError(
            f"unknown method {name!r} in interleave=; use target, lossless, topk-K, autojudge or autojudge-tT "
            "joined by '|' (e.g. interleave=lossless|autojudge-t0.3)"
        )
    mode = name.split("-")[0]
    threshold = float(match["t"]) if match["t"] else None
    return {"mode": mode, "topk": int(match["k"]) if match["k"] else None, "threshold": threshold}


def parse_methods(text: str) -> list[str]:
    names = [n.strip() for n in str(text).split("|") if n.strip()]
    for name in names:
        parse_method(name)
    if len(set(names)) != len(names):
        raise ConfigError(f"interleave={text} names a method twice")
    return names


def request_key(context: str, gen_kwargs: dict) -> str:
    """What identifies a generation request across lm-eval runs: its context and generation arguments."""
    blob = json.dumps([context, gen_kwargs], sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def method_files(folder: Path, method: str) -> list[Path]:
    """Every file holding ``method``'s outputs in ``folder``: the one-process file and any rank's."""
    folder = Path(folder)
    return [
        p
        for p in [folder / f"{method}.jsonl", *sorted(folder.glob(f"{method}.rank*of*.jsonl"))]
        if p.is_file()
    ]


def read_method(folder: Path, method: str, files: list[Path] | None = None) -> dict[str, tuple[str, dict]]:
    """``method``'s outputs from every file of ``folder`` that holds them (``files``: those, found already)."""
    out: dict[str, tuple[str, dict]] = {}
    for path in method_files(folder, method) if files is None else files:
        out.update(read_outputs(path))
    return out


def read_outputs(path: Path) -> dict[str, tuple[str, dict]]:
    """``{key: (text, record)}`` of one method's file; the last line for a key wins; a torn last line is
    skipped; any other unreadable line is a DataError."""
    path = Path(path)
    out: dict[str, tuple[str, dict]] = {}
    if not path.is_file():
        return out
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            out[row["key"]] = (row["text"], row["record"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            if number == len(lines):
                break  # cut off by a kill while writing: that request is decoded again
            raise DataError(
                f"{path}:{number}: not an interleaved output line ({exc}); remove the file"
            ) from None
    return out


class OutputStore:
    """The per-method JSONL files of one interleaved pass: read once, appended (and fsynced) per request."""

    def __init__(self, folder: str | Path, methods: list[str], rank: int = 0, world_size: int = 1) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.methods = list(methods)
        self.suffix = "" if world_size == 1 else f".rank{rank}of{world_size}"
        for method in self.methods:
            _drop_torn_tail(self.path(method))  # only this process's own file: another rank may be writing
        self.done = {m: read_method(self.folder, m) for m in self.methods}

    def path(self, method: str) -> Path:
        """The file this process appends ``method``'s outputs to."""
        return self.folder / f"{method}{self.suffix}.jsonl"

    def complete(self, key: str) -> dict[str, tuple[str, dict]] | None:
        """Every method's (text, record) for ``key``, or None when some method lacks it."""
        if all(key in self.done[m] for m in self.methods):
            return {m: self.done[m][key] for m in self.methods}
        return None

    def add(self, key: str, results: dict[str, tuple[str, dict]]) -> None:
        for method, (text, record) in results.items():
            line = json.dumps({"key": key, "text": text, "record": record}, ensure_ascii=False) + "\n"
            with self.path(method).open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self.done[method][key] = (text, record)


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line left without its newline by a kill, so appends start on a line of their own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


class Replay:
    """One method's outputs from an interleaved pass, handed back request by request."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.method = self.path.name.removesuffix(".jsonl")
        files = method_files(self.path.parent, self.method)
        if not files:
            raise ConfigError(f"replay file not found: {self.path}; run the interleaved pass first")
        self.outputs = read_method(self.path.parent, self.method, files)  # with a parallel pass's rank files
        parse_method(self.method)

    def get(self, key: str, context: str) -> tuple[str, dict]:
        try:
            return self.outputs[key]
        except KeyError:
            raise DataError(
                f"{self.path} has no output for the request {context[:60]!r}...: it was made for other "
                "requests (task, limit, chat template or gen_kwargs differ); rerun the interleaved pass"
            ) from None


def check_interleave_args(interleave, interleave_dir, replay) -> list[str]:
    """The methods ``interleave=`` adds (checked, before any model loads)."""
    if replay and interleave:
        raise ConfigError("replay= returns stored outputs; interleave= decodes them: pass one of the two")
    if not interleave:
        if interleave_dir:
            raise ConfigError("interleave_dir= needs interleave=METHOD|METHOD...")
        return []
    if not interleave_dir:
        raise ConfigError("interleave= needs interleave_dir=DIR for the methods' outputs")
    return parse_methods(interleave)


def open_replay(path: str, name: str, mode: str) -> Replay:
    """The Replay of ``path``, refused unless its method is this run's (``name``, or its bare ``mode``)."""
    replay = Replay(path)
    if replay.method not in (name, mode):
        raise ConfigError(
            f"replay={path} holds method {replay.method}, this run is {name}: pass the matching mode/topk/threshold"
        )
    return replay


def point_name(mode: str, topk: int | None = None, threshold: float | None = None) -> str:
    """A method's name, the inverse of :func:`parse_method`: target, lossless, topk-K, autojudge(-tT)."""
    if mode == "topk":
        return f"topk-{topk}"
    if mode == "autojudge" and threshold is not None:
        return f"autojudge-t{threshold:g}"
    return mode


def method_name(decode) -> str:
    """A DecodeConfig as a sweep point's name (its threshold always set)."""
    return point_name(decode.mode, decode.topk, decode.threshold)


def rotation(methods: list[str], index: int) -> list[str]:
    """``methods`` starting at position ``index % n``: each method leads as often as the others."""
    shift = index % len(methods)
    return methods[shift:] + methods[:shift]
