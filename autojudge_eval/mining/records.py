"""Mined data on disk: typed JSONL records, safetensors feature shards, manifests, resume and provenance.

A mining run writes one *part* folder per shard of the problem list (``part-00-of-01`` without sharding)::

    OUT/part-00-of-02/manifest.json            the commit point: settings, shards, byte sizes, counts
    OUT/part-00-of-02/labels.jsonl             one MismatchLabel per line
    OUT/part-00-of-02/problems.jsonl           one ProblemRecord per mined problem
    OUT/part-00-of-02/features-00000.safetensors   draft_hidden (n, Hd), target_hidden (n, H), float32

A checkpoint writes the shard (temporary file, then rename), appends the JSONL lines, fsyncs, and only then
rewrites the manifest, which records how many bytes of each JSONL file are committed. Opening a part again
truncates both files to those sizes and deletes shards the manifest does not list, so a run killed at any
moment resumes exactly after its last checkpoint. Label ``row`` indexes the rows of its ``shard`` file.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from autojudge_eval.errors import ConfigError, DataError
from autojudge_eval.fileio import atomic_write_text, fsync
from autojudge_eval.models.loading import file_sha256
from autojudge_eval.provenance import now

log = logging.getLogger(__name__)

MINED_FORMAT = "autojudge-mined/1"
MANIFEST = "manifest.json"
LABELS = "labels.jsonl"
PROBLEMS = "problems.jsonl"
# Manifest keys that must agree when a part is reopened (anything else may change between sessions).
HEADER_KEYS = ("format", "task", "pair", "target_hidden_size", "draft_hidden_size", "label_settings", "part")


@dataclass
class MismatchLabel:
    """One mismatch of the semi-greedy search: the draft's token replaced the text's at ``position``."""

    problem_id: str
    index: int  # order of this mismatch within its problem
    position: int  # 0-based position in the generated answer (prompt excluded)
    draft_token: int
    target_token: int  # the current text's token there (the target's greedy token)
    important: bool  # the substitution changed the outcome
    reference_outcome: str
    outcome: str  # the outcome of the text with the draft token and the target's continuation
    continuation_tokens: int  # tokens the target generated after the draft token
    seconds: float
    draft_piece: str = ""
    target_piece: str = ""
    shard: str = ""  # features file in the same part folder
    row: int = -1  # row of this mismatch in that file

    @classmethod
    def from_dict(cls, data: dict) -> MismatchLabel:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class ProblemRecord:
    """What mining one problem gave and cost."""

    problem_id: str
    prompt_tokens: int
    reference_tokens: int
    final_tokens: int
    reference_outcome: str
    mismatches: int
    important: int
    continuation_tokens: int
    target_forwards: int
    seconds: float  # from its start to its end; batched problems overlap, so these do not add up to wall time
    shard: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> ProblemRecord:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class MinedData:
    """Every committed label of one or more part folders, with its features in label order."""

    labels: list[MismatchLabel]
    draft_hidden: torch.Tensor  # (n, Hd) float32
    target_hidden: torch.Tensor  # (n, H) float32
    problems: list[ProblemRecord]
    manifests: list[dict]


def part_name(index: int, count: int) -> str:
    return f"part-{index:02d}-of-{count:02d}"


class PartWriter:
    """Appends mined problems to one part folder; ``checkpoint`` commits them, reopening resumes."""

    def __init__(self, folder: Path, header: dict) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.header = {"format": MINED_FORMAT, **header}
        self.manifest = self._open()
        self._labels: list[MismatchLabel] = []
        self._problems: list[ProblemRecord] = []
        self._draft: list[torch.Tensor] = []
        self._target: list[torch.Tensor] = []

    def _open(self) -> dict:
        path = self.folder / MANIFEST
        if not path.is_file():
            for stale in (LABELS, PROBLEMS):
                (self.folder / stale).unlink(missing_ok=True)
            _remove_shards(self.folder, keep=set())
            fresh = {**self.header, "created": now(), "shards": [], "labels_bytes": 0, "problems_bytes": 0}
            fresh["counts"] = {
                "problems": 0,
                "mismatches": 0,
                "important": 0,
                "seconds": 0.0,
                "wall_seconds": 0.0,
            }
            return fresh
        manifest = read_manifest(path)
        for key in HEADER_KEYS:
            if manifest.get(key) != self.header.get(key):
                raise ConfigError(
                    f"{self.folder} holds a mining run with {key}={manifest.get(key)!r}, this run has "
                    f"{self.header.get(key)!r}: resume with the same settings or choose another --out"
                )
        _truncate(self.folder / LABELS, manifest["labels_bytes"])
        _truncate(self.folder / PROBLEMS, manifest["problems_bytes"])
        _remove_shards(self.folder, keep={s["file"] for s in manifest["shards"]})
        return manifest

    @property
    def pending(self) -> int:
        return len(self._problems)

    def add(self, problem: ProblemRecord, labels: list[MismatchLabel], draft, target) -> None:
        """Buffer one problem; ``draft``/``target`` are (m, Hd)/(m, H) features of its m labels."""
        if len(labels) != len(draft) or len(labels) != len(target):
            raise ValueError(f"{len(labels)} labels but {len(draft)}/{len(target)} feature rows")
        self._problems.append(problem)
        self._labels.extend(labels)
        self._draft.append(draft.float().cpu())
        self._target.append(target.float().cpu())

    def checkpoint(self, wall_seconds: float | None = None) -> None:
        """Commit the buffered problems: shard, then JSONL lines, then the manifest.

        ``counts.seconds`` adds up the problems' own durations, which overlap when problems are batched;
        ``wall_seconds`` (the wall time spent on them) goes to ``counts.wall_seconds``, which stays None for a
        part that holds problems from before it was recorded."""
        if not self._problems:
            return
        shard = ""
        if self._labels:
            shard = f"features-{len(self.manifest['shards']):05d}.safetensors"
            tensors = {
                "draft_hidden": torch.cat(self._draft).contiguous(),
                "target_hidden": torch.cat(self._target).contiguous(),
            }
            tmp = self.folder / (shard + ".tmp")
            save_file(tensors, str(tmp))
            fsync(tmp)
            tmp.chmod(0o666 & ~_umask())  # safetensors creates 0600 files; shards are data like the JSONL
            os.replace(tmp, self.folder / shard)
            self.manifest["shards"].append(
                {"file": shard, "rows": len(self._labels), "sha256": file_sha256(self.folder / shard)}
            )
        for row, label in enumerate(self._labels):
            label.shard, label.row = shard, row
        for problem in self._problems:
            problem.shard = shard
        self.manifest["labels_bytes"] = _append_jsonl(self.folder / LABELS, self._labels)
        self.manifest["problems_bytes"] = _append_jsonl(self.folder / PROBLEMS, self._problems)
        counts = self.manifest["counts"]
        counts["problems"] += len(self._problems)
        counts["mismatches"] += len(self._labels)
        counts["important"] += sum(label.important for label in self._labels)
        counts["seconds"] = round(counts["seconds"] + sum(p.seconds for p in self._problems), 3)
        if "wall_seconds" not in counts:  # a part started by a version that did not record it
            counts["wall_seconds"] = None if counts["problems"] > len(self._problems) else 0.0
        if counts["wall_seconds"] is not None:
            counts["wall_seconds"] = (
                None if wall_seconds is None else round(counts["wall_seconds"] + wall_seconds, 3)
            )
        self.manifest.update(self.header, updated=now())
        atomic_write_text(self.folder / MANIFEST, json.dumps(self.manifest, indent=2) + "\n")
        self._labels, self._problems, self._draft, self._target = [], [], [], []


def find_parts(root: Path) -> list[Path]:
    """Part folders under ``root`` (``root`` itself when it holds a manifest), in name order."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return [root]
    return sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))


def done_problem_ids(root: Path) -> set[str]:
    """Problem ids committed in any part under ``root`` (so a re-sharded run skips them too)."""
    done: set[str] = set()
    for part in find_parts(root):
        manifest = read_manifest(part / MANIFEST)
        done.update(
            p.problem_id
            for p in read_committed_jsonl(part / PROBLEMS, manifest["problems_bytes"], ProblemRecord)
        )
    return done


def read_mined(roots: list[Path] | Path) -> MinedData:
    """Load committed labels and features of every part under ``roots``; a problem mined twice counts once."""
    roots = [roots] if isinstance(roots, str | Path) else roots
    parts = [part for root in roots for part in find_parts(Path(root))]
    if not parts:
        raise DataError(f"no mined data (no {MANIFEST}) under {', '.join(str(r) for r in roots)}")
    labels, draft, target, problems, manifests, seen = [], [], [], [], [], set()
    for part in parts:
        manifest = read_manifest(part / MANIFEST)
        manifests.append({**manifest, "folder": str(part)})
        fresh = [
            p
            for p in read_committed_jsonl(part / PROBLEMS, manifest["problems_bytes"], ProblemRecord)
            if p.problem_id not in seen
        ]
        keep = {p.problem_id for p in fresh}
        seen |= keep
        problems.extend(fresh)
        shards: dict[str, dict[str, torch.Tensor]] = {}
        for label in read_committed_jsonl(part / LABELS, manifest["labels_bytes"], MismatchLabel):
            if label.problem_id not in keep:
                continue
            if label.shard not in shards:
                shards[label.shard] = _load_shard(part / label.shard)
            labels.append(label)
            draft.append(shards[label.shard]["draft_hidden"][label.row])
            target.append(shards[label.shard]["target_hidden"][label.row])
    if not labels:
        raise DataError(f"the mined data under {', '.join(str(r) for r in roots)} holds no mismatch yet")
    return MinedData(labels, torch.stack(draft), torch.stack(target), problems, manifests)


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read mining manifest {path}: {exc}") from exc
    if manifest.get("format") != MINED_FORMAT:
        raise DataError(f"{path} is not a mining manifest (format {manifest.get('format')!r})")
    return manifest


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, ValueError, SafetensorError) as exc:
        raise DataError(f"cannot read feature shard {path}: {exc}; mine that part again") from exc


def read_committed_jsonl(path: Path, size: int, kind):
    if size == 0:
        return []
    with open(path, "rb") as handle:
        data = handle.read(size)
    if len(data) != size:
        raise DataError(f"{path} is shorter ({len(data)} bytes) than its manifest says ({size})")
    return [kind.from_dict(json.loads(line)) for line in data.decode("utf-8").splitlines() if line.strip()]


def _append_jsonl(path: Path, records) -> int:
    """Append one JSON line per dataclass record, fsync, and return the file's new size."""
    with open(path, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        return handle.tell()


def _truncate(path: Path, size: int) -> None:
    if path.is_file():
        if path.stat().st_size < size:
            raise DataError(f"{path} is shorter than its manifest says ({size} bytes): the run is corrupt")
        os.truncate(path, size)
    elif size:
        raise DataError(f"{path} is missing but its manifest lists {size} bytes")


def _remove_shards(folder: Path, keep: set[str]) -> None:
    for path in folder.glob("features-*.safetensors*"):
        if path.name not in keep:
            log.info("removing uncommitted shard %s", path)
            path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
