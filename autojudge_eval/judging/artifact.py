"""A trained judge as plain weights: P(important) = sigmoid(((x - mean) / scale) . weight + bias).

StandardScaler + LogisticRegression reduce to these four float32 arrays. A judge is a folder holding
``judge.safetensors`` (``mean``, ``scale``, ``weight``: (D,), ``bias``: (1,)) and ``judge.json`` (its card:
format, pair, hidden sizes, task, feature set, C, metrics, thresholds, data counts and hash, command, date,
versions). Nothing is pickled; loading checks the card against the pair the judge will run with.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from autojudge_eval.config import SHIPPED_TASKS, JudgeSpec
from autojudge_eval.engine.features import FEATURE_SETS, feature_dim
from autojudge_eval.errors import JudgeArtifactError

log = logging.getLogger(__name__)

JUDGE_FORMAT = "autojudge-judge/1"
WEIGHTS = "judge.safetensors"
CARD = "judge.json"
TENSORS = ("mean", "scale", "weight", "bias")
REFUSED_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".bin", ".npy")

# What a judge's labels and the reports' agreement mean, stated in every newly trained judge's card
# (``labels``, ``agreement``) and, for cards written before these keys existed, by the report's judge lines.
AGREEMENT_MEANING = (
    "reports' agreement: same real answer / documents where the target-only run gave one (two missing "
    "answers never count as agreeing; their share is reported beside it)"
)


def label_meaning(task: str | None) -> str:
    """What "important" means in the mined labels a judge of ``task`` was trained on."""
    if task is not None and "gsm8k" in task:
        return (
            "mined labels: a mismatch is important when taking the draft's token changes the final GSM8K number "
            "of the greedy continuation (against the target's own answer, not gold)"
        )
    if task is not None and any(code in task for code in ("livecodebench", "humaneval")):
        return (
            "mined labels: a mismatch is important when taking the draft's token changes the program's "
            "behaviour on the problem's tests (per test verdict, and output when wrong; against the target's "
            "own program)"
        )
    return (
        f"mined labels: a mismatch is important when taking the draft's token changes the outcome mining "
        f"compares for task {task!r} (against the target's own answer, not gold)"
    )


def card_meanings(card: dict) -> tuple[str, str]:
    """(labels, agreement) of a card: its own statements, else those of :func:`label_meaning` and
    :data:`AGREEMENT_MEANING` (cards trained before 2026-12-03 carry none; they are not rewritten, since sweeps
    and the regression gate record their sha256)."""
    return card.get("labels") or label_meaning(card.get("task")), card.get("agreement") or AGREEMENT_MEANING


@dataclass
class Judge:
    """Four float32 tensors and a card; callable on one (D,) feature vector, batched via ``predict_proba``."""

    mean: torch.Tensor  # (D,)
    scale: torch.Tensor  # (D,)
    weight: torch.Tensor  # (D,)
    bias: torch.Tensor  # (1,)
    card: dict = field(default_factory=dict)
    _folded: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in TENSORS:
            setattr(self, name, getattr(self, name).detach().float().cpu().reshape(-1))
        dim = self.mean.numel()
        if self.scale.numel() != dim or self.weight.numel() != dim or self.bias.numel() != 1:
            raise JudgeArtifactError(
                f"judge arrays disagree: mean {dim}, scale {self.scale.numel()}, weight {self.weight.numel()}, "
                f"bias {self.bias.numel()} (expected D, D, D, 1)"
            )

    @property
    def dim(self) -> int:
        return self.mean.numel()

    @property
    def features(self) -> str:
        return self.card.get("features", "DD-DT")

    @property
    def threshold(self) -> float | None:
        """The card's default threshold (recall of important tokens ``card['default_recall']``), if any."""
        value = self.card.get("threshold")
        return float(value) if value is not None else None

    def _fold(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(w / scale, b - mean . w / scale) on ``device``: one dot product per call."""
        if device not in self._folded:
            w = (self.weight / self.scale).double()
            b = self.bias.double() - (self.mean.double() * w).sum()
            self._folded[device] = (w.float().to(device), b.float().to(device))
        return self._folded[device]

    def logit(self, features: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (...) logits of P(important)."""
        if features.shape[-1] != self.dim:
            raise JudgeArtifactError(
                f"judge expects {self.dim} features ({self.features}), got {features.shape[-1]}"
            )
        w, b = self._fold(features.device)
        return features.float() @ w + b

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        """(n, D) -> (n,) P(important)."""
        return torch.sigmoid(self.logit(features))

    def __call__(self, features: torch.Tensor) -> float:
        """(D,) -> P(important), the callable ``engine.acceptance.JudgeAccept`` expects."""
        return float(torch.sigmoid(self.logit(features)))

    def save(self, folder: str | Path) -> Path:
        """Write ``judge.safetensors`` and ``judge.json`` into ``folder``; return the weights file."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).contiguous() for name in TENSORS}
        save_file(tensors, str(folder / WEIGHTS), metadata={"format": JUDGE_FORMAT})
        card = {"format": JUDGE_FORMAT, "feature_dim": self.dim, **self.card}
        (folder / CARD).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
        return folder / WEIGHTS


def load_judge(path: str | Path, pair=None, *, allow_other_pair: bool = False) -> Judge:
    """Load a judge folder (or its ``.safetensors`` file) and check it fits ``models.pair``.

    Refuses pickles and anything that is not safetensors with its card. With a pair, the feature size must
    match the pair's hidden sizes and the card's pair name must be ``pair.name`` (unless
    ``allow_other_pair``); every mismatch raises :class:`JudgeArtifactError` saying what to do.
    """
    weights, card_path = _paths(Path(path))
    card = _read_card(card_path)
    try:
        tensors = load_file(str(weights))
    except (OSError, ValueError, SafetensorError, RuntimeError) as exc:
        raise JudgeArtifactError(
            f"{weights} is not a readable safetensors judge ({exc}); {_fix(weights)}"
        ) from exc
    missing = [name for name in TENSORS if name not in tensors]
    if missing:
        raise JudgeArtifactError(f"{weights} lacks {', '.join(missing)}: not a judge file; {_fix(weights)}")
    judge = Judge(*(tensors[name] for name in TENSORS), card=card)
    _check_card(judge, weights)
    if pair is not None:
        check_pair(judge, pair, allow_other_pair=allow_other_pair)
    return judge


def _fix(path: Path) -> str:
    """What to do about a damaged judge file: restore a shipped one from git, retrain one of your own."""
    path = Path(path).resolve()
    for root in judges_roots():
        if path.is_relative_to(root.resolve()):
            shown = Path(path).relative_to(root.resolve().parent)
            return (
                f"it ships with the checkout, so restore it: `git checkout -- {shown.parent}` "
                f"(in {root.resolve().parent})"
            )
    return "retrain it with `autojudge-eval train`, or pass a judge folder it wrote"


def check_judge_files(spec: JudgeSpec | None) -> None:
    """Before any model loads: a judge named by path must be a readable judge (card, arrays, sizes). What
    needs the pair (its hidden sizes and name; which shipped judge a benchmark name means) waits for it."""
    if spec is not None and spec.kind == "path":
        load_judge(spec.value)


def read_card(path: str | Path) -> dict:
    """A judge's JSON card alone (for reports): the folder's or the ``.safetensors`` file's; checked as
    :func:`load_judge` checks it, weights not read."""
    return _read_card(_paths(Path(path))[1])


def _paths(path: Path) -> tuple[Path, Path]:
    if path.suffix.lower() in REFUSED_SUFFIXES:
        raise JudgeArtifactError(
            f"{path}: pickled/torch judge files are refused (they can run code); judges are "
            f"{WEIGHTS} + {CARD} folders written by `autojudge-eval train`"
        )
    if path.is_dir():
        weights, card = path / WEIGHTS, path / CARD
    elif path.suffix == ".safetensors":
        weights, card = path, path.with_suffix(".json")
    else:
        raise JudgeArtifactError(
            f"{path}: expected a judge folder or a .safetensors file with its .json card "
            "(train one with `autojudge-eval train`)"
        )
    for needed in (weights, card):
        if not needed.is_file():
            raise JudgeArtifactError(
                f"judge file {needed} is missing: pass a folder written by `autojudge-eval train`"
            )
    return weights, card


def _read_card(path: Path) -> dict:
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise JudgeArtifactError(f"judge card {path} is unreadable ({exc}); {_fix(path)}") from exc
    if not isinstance(card, dict) or card.get("format") != JUDGE_FORMAT:
        found = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise JudgeArtifactError(f"{path} is not a judge card (format {found!r}, expected {JUDGE_FORMAT!r})")
    return card


def _check_card(judge: Judge, weights: Path) -> None:
    features = judge.card.get("features")
    if features not in FEATURE_SETS:
        raise JudgeArtifactError(
            f"{weights}: card names feature set {features!r}, expected one of {FEATURE_SETS}"
        )
    expected = feature_dim(
        features, judge.card.get("draft_hidden_size", 0), judge.card.get("target_hidden_size", 0)
    )
    if judge.dim != expected or judge.card.get("feature_dim", judge.dim) != judge.dim:
        raise JudgeArtifactError(
            f"{weights} holds {judge.dim} weights but its card says {features} over hidden sizes "
            f"{judge.card.get('draft_hidden_size')}+{judge.card.get('target_hidden_size')} ({expected}); "
            f"{_fix(weights)}"
        )


def check_pair(judge: Judge, pair, *, allow_other_pair: bool = False) -> None:
    """Raise JudgeArtifactError unless ``judging.artifact`` was trained for ``models.pair``'s hidden sizes (and name)."""
    card, fix = judge.card, "train a judge for this pair with `autojudge-eval mine` + `autojudge-eval train`"
    target = pair.stack.hidden_size
    if card.get("target_hidden_size") != target:
        raise JudgeArtifactError(
            f"judge was trained on target hidden size {card.get('target_hidden_size')}, this target has "
            f"{target}: {fix}"
        )
    if judge.features == "DD-DT" and not pair.draft_hidden_size:
        raise JudgeArtifactError(
            f"judge reads DD-DT features (draft hidden states), but the draft of pair {pair.name!r} proposes "
            "none (a lookup drafter such as ngram): use a DT judge (mine and train with --features DT)"
        )
    if judge.features == "DD-DT" and card.get("draft_hidden_size") != pair.draft_hidden_size:
        raise JudgeArtifactError(
            f"judge was trained on draft hidden size {card.get('draft_hidden_size')}, this draft has "
            f"{pair.draft_hidden_size}: {fix}"
        )
    if card.get("pair") != pair.name:
        if not allow_other_pair:
            raise JudgeArtifactError(
                f"judge was trained for pair {card.get('pair')!r}, not {pair.name!r}: {fix}"
            )
        log.warning("judge trained for pair %r used with %r", card.get("pair"), pair.name)


# --- judges shipped in the checkout's judges/<task>/<pair>/<features>/ --------------------------------------


def pair_slug(name: str) -> str:
    """A pair name as a folder name (``judges/<task>/<slug>/``, ``mined/<task>/<slug>/``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100]


def judges_roots() -> list[Path]:
    """Where shipped judges live: ``./judges`` first, then the checkout the package was imported from."""
    roots = [
        Path("judges"),
        Path(__file__).resolve().parents[2] / "judges",
    ]  # relative: records stay portable
    return [
        r for i, r in enumerate(roots) if r.is_dir() and r.resolve() not in {x.resolve() for x in roots[:i]}
    ]


def shipped_judge(task: str, pair_name: str, features: str | None = None) -> Path:
    """The shipped judge folder for ``task`` and this pair (``engine.features``: DD-DT first, else any).

    Raises JudgeArtifactError naming what is shipped for the task when there is none for the pair."""
    if task not in SHIPPED_TASKS:
        raise JudgeArtifactError(
            f"no shipped judges for task {task!r}; tasks with judges: {', '.join(SHIPPED_TASKS)}"
        )
    order = [features] if features else ["DD-DT", *sorted(set(FEATURE_SETS) - {"DD-DT"})]
    for root in judges_roots():
        for name in order:
            folder = root / task / pair_slug(pair_name) / name
            if (folder / WEIGHTS).is_file() and (folder / CARD).is_file():
                return folder
    shipped = sorted(
        {p.parent.parent.name for root in judges_roots() for p in (root / task).glob("*/*/" + CARD)}
    )
    raise JudgeArtifactError(
        f"no shipped {task} judge for pair {pair_name!r}"
        + (f" (shipped for: {', '.join(shipped)})" if shipped else "")
        + "; train one with `autojudge-eval mine` + `autojudge-eval train`, or pass judge=PATH"
    )


def judge_sha256(judge: str | None) -> str | None:
    """sha256 over a judge's weights and card (its default threshold lives there); None for stand-ins and
    names (the backend resolves those and records the folder in each point's results)."""
    if not judge or not Path(judge).exists():
        return None
    folder = Path(judge) if Path(judge).is_dir() else Path(judge).parent
    files = [folder / WEIGHTS, folder / CARD]
    if not all(f.is_file() for f in files):
        return None
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


@dataclass(frozen=True)
class ResolvedJudge:
    """A :class:`~autojudge_eval.config.JudgeSpec` made concrete for one pair: what the acceptance rule needs.

    ``name`` is what records show (the stand-in's name, or the judge folder's path); ``threshold`` is the
    card's default (None for stand-ins)."""

    spec: JudgeSpec
    name: str
    fn: object  # Callable[[torch.Tensor], float]: P(important) of one feature vector
    features: str
    threshold: float | None


def resolve_judge(spec: JudgeSpec, pair) -> ResolvedJudge:
    """The one place a judge spec becomes weights: find a shipped judge for the pair, load and check it."""
    from autojudge_eval.engine.acceptance import constant_judge

    if spec.kind == "constant":
        return ResolvedJudge(spec, spec.value, constant_judge(spec.constant), "DT", None)
    path = str(shipped_judge(spec.value, pair.name)) if spec.kind == "shipped" else spec.value
    judge = load_judge(path, pair)
    return ResolvedJudge(spec, path, judge, judge.features, judge.threshold)
