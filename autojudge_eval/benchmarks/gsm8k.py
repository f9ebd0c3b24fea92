"""GSM8K data: a local JSONL copy or the Hugging Face hub, and an offline cache for the hub id.

Local copies are laid out like the hub's ``main`` configuration: one ``{"question", "answer"}`` object per
line, the gold number after ``#### `` at the end of ``answer``. ``AUTOJUDGE_DATA_DIR`` points at a folder
holding ``gsm8k/train.jsonl`` and ``gsm8k/test.jsonl``; without it the tasks read ``openai/gsm8k``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
from datasets.exceptions import DatasetNotFoundError
from datasets.packaged_modules.json.json import Json

from autojudge_eval.errors import ConfigError, DataError
from autojudge_eval.fileio import json_object

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "AUTOJUDGE_DATA_DIR"
GSM8K_HUB_ID = "openai/gsm8k"
GSM8K_HUB_CONFIG = "main"
GSM8K_HUB_TEST_SIZE = 1319
GSM8K_SPLITS = ("train", "test")
GSM8K_FEATURES = datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string")})

PathLike = str | os.PathLike[str]


def load_gsm8k(split: str, path: PathLike | None = None, *, origin: str | None = None) -> datasets.Dataset:
    """One GSM8K split with the string columns ``question`` and ``answer``.

    ``path`` is a ``.jsonl`` file (read as the split) or a folder holding ``<split>.jsonl`` or
    ``gsm8k/<split>.jsonl``. None means the folder named by ``AUTOJUDGE_DATA_DIR`` when it is set, else
    the hub dataset ``openai/gsm8k`` (config ``main``). Raises DataError when the file is missing or a
    line is not a GSM8K record. ``origin`` names where ``path`` came from in messages (e.g. ``--data``).
    """
    if split not in GSM8K_SPLITS:
        raise ConfigError(f"GSM8K split must be one of {GSM8K_SPLITS}, got {split!r}")
    if path is None:
        path, origin = data_dir_from_env(), DATA_DIR_ENV
    if path is None:
        return _load_from_hub(split)
    rows = read_gsm8k_jsonl(resolve_gsm8k_file(split, Path(path), origin=origin))
    return datasets.Dataset.from_list(rows, features=GSM8K_FEATURES)


def resolve_gsm8k_file(split: str, path: Path, *, origin: str | None = None) -> Path:
    """The JSONL file that holds ``split`` under ``path`` (a file is returned as it is); ``origin`` says
    where the path came from (``AUTOJUDGE_DATA_DIR``, ``--data``), for the message."""
    if path.is_file():
        return path
    candidates = [path / f"{split}.jsonl", path / "gsm8k" / f"{split}.jsonl"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    named = origin or f"--data (or {DATA_DIR_ENV})"
    unset = f", or unset {DATA_DIR_ENV} to read {GSM8K_HUB_ID} from the hub" if origin == DATA_DIR_ENV else ""
    raise DataError(
        f"GSM8K {split} split not found (tried {tried}). Point {named} at a folder containing "
        f"gsm8k/{split}.jsonl{unset}."
    )


def read_gsm8k_jsonl(file: Path) -> list[dict[str, str]]:
    """Parse a GSM8K JSONL file; blank lines are skipped, anything else must be a GSM8K record."""
    rows = []
    with file.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if line.strip():
                rows.append(_parse_record(line, file, line_no))
    if not rows:
        raise DataError(f"{file}: no GSM8K records (expected one JSON object per line)")
    return rows


def _parse_record(line: str, file: Path, line_no: int) -> dict[str, str]:
    record = json_object(line, f"{file}, line {line_no}")
    for key in ("question", "answer"):
        if not isinstance(record.get(key), str):
            raise DataError(
                f"{file}, line {line_no}: expected a string field {key!r}, found {type(record.get(key)).__name__}"
            )
    return {"question": record["question"], "answer": record["answer"]}


def _load_from_hub(split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(GSM8K_HUB_ID, GSM8K_HUB_CONFIG, split=split)
    except (ConnectionError, DatasetNotFoundError) as err:
        raise DataError(
            f"could not load {GSM8K_HUB_ID} ({GSM8K_HUB_CONFIG}) from the hub or the datasets cache: {err}. "
            f"Offline, set {DATA_DIR_ENV} to a folder containing gsm8k/{{train,test}}.jsonl, "
            "or build the cache once with autojudge_eval.benchmarks.gsm8k.cache_gsm8k_for_hub_id and set HF_HUB_OFFLINE=1."
        ) from err


def data_dir_from_env() -> Path | None:
    """The folder named by ``AUTOJUDGE_DATA_DIR``, or None when it is unset or empty."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else None


def cache_gsm8k_for_hub_id(local_dir: PathLike, cache_dir: PathLike | None = None) -> Path:
    """Write a local GSM8K copy into the datasets cache as ``openai/gsm8k`` (config ``main``).

    Afterwards ``datasets.load_dataset("openai/gsm8k", "main")``, and so lm-eval's stock ``gsm8k`` tasks,
    load it with ``HF_HUB_OFFLINE=1`` (datasets' fallback for a hub id it cannot reach is its own cache of
    a previous load). ``cache_dir`` defaults to datasets' cache (``$HF_DATASETS_CACHE`` or
    ``$HF_HOME/datasets``). Returns the folder written; a second call with the same files reuses it, and
    the latest call wins when several local copies were cached.
    """
    files = {split: resolve_gsm8k_file(split, Path(local_dir)) for split in GSM8K_SPLITS}
    for file in files.values():
        read_gsm8k_jsonl(file)  # validate before anything is written
    cache_root = Path(cache_dir) if cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE)
    target = _hub_cache_folder(cache_root, files)
    builder = Json(
        cache_dir=str(cache_root),
        dataset_name=GSM8K_HUB_ID.split("/")[-1],
        config_name=GSM8K_HUB_CONFIG,
        data_files={split: str(file) for split, file in files.items()},
        features=GSM8K_FEATURES,
        hash=target.name,
    )
    builder.download_and_prepare(output_dir=str(target))
    os.utime(target)  # offline, datasets picks the most recently modified cache of a config
    _warn_if_partial(builder.info)
    logger.info("cached %s as %s (%s) in %s", local_dir, GSM8K_HUB_ID, GSM8K_HUB_CONFIG, target)
    return target


def _hub_cache_folder(cache_root: Path, files: dict[str, Path]) -> Path:
    """``<cache>/openai___gsm8k/main/0.0.0/<content hash>``: the layout datasets searches offline."""
    digest = hashlib.sha256()
    for split in sorted(files):
        digest.update(split.encode())
        digest.update(files[split].read_bytes())
    namespace, name = GSM8K_HUB_ID.split("/")
    return cache_root / f"{namespace}___{name}" / GSM8K_HUB_CONFIG / "0.0.0" / digest.hexdigest()[:16]


def _warn_if_partial(info: datasets.DatasetInfo) -> None:
    test_size = info.splits["test"].num_examples if info.splits and "test" in info.splits else None
    if test_size is not None and test_size != GSM8K_HUB_TEST_SIZE:
        logger.warning(
            "the cached %s test split has %d of the hub's %d problems; scores from it are not comparable "
            "with full-test-set numbers",
            GSM8K_HUB_ID,
            test_size,
            GSM8K_HUB_TEST_SIZE,
        )


# --- scoring: lm-eval's GSM8K rules, for use outside lm-eval (bench, mining, reports) ----------------


# lm-eval's gsm8k exact_match settings: ignore_case=true, ignore_punctuation=false, regexes_to_ignore=...
EXACT_MATCH_IGNORED = (",", r"\$", r"(?s).*#### ", r"\.$")


def gsm8k_target(doc: Mapping[str, Any]) -> str:
    """The gold answer: the text after the last ``####`` (as the tasks' ``doc_to_target``)."""
    return doc["answer"].split("####")[-1].strip()


# The tasks' regex filters (as in lm-eval's gsm8k_cot_llama), for use outside lm-eval (bench, mining).
STRICT_PATTERN = re.compile(r"The final answer is ((-?[$0-9.,]{2,})|(-?[0-9]+))")


FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def extract_final_number(text: str) -> str | None:
    """The normalised answer of a generation: the last "The final answer is N", else the last number.

    Uses the patterns of the tasks' strict-match and flexible-extract filters; None when there is no number.
    """
    for pattern in (STRICT_PATTERN, FLEXIBLE_PATTERN):
        matches = pattern.findall(text)
        if matches:
            last = matches[-1]
            found = next((group for group in last if group), "") if isinstance(last, tuple) else last
            return normalize_answer(found.strip())
    return None


def normalize_answer(text: str) -> str:
    """lm-eval's GSM8K ``exact_match`` normalisation, applied to both sides before comparing."""
    for pattern in EXACT_MATCH_IGNORED:
        text = re.sub(pattern, "", text)
    return text.lower()


def answers_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)
