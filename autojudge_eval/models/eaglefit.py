"""Fit an EAGLE head by self-distillation: the target's own greedy answers, its features, the EAGLE loss.

Three resumable stages, each cached on disk:

1. answers: the target's greedy answers to the training prompts, several problems decoded as one batch
   (:func:`generate_batched`; one JSONL row per finished problem, the format of ``fit-draft``'s answers);
2. features: one teacher-forced target pass per answer: its normed last hidden states f_t and greedy next
   tokens y_t at every position (one safetensors file per problem);
3. training: the head reads (token t+1, f_t) and predicts f_{t+1}; loss = smooth-L1(prediction, f_{t+1}) +
   ``cls_weight`` x cross-entropy of the LM head on the prediction against y_{t+1} (over the most frequent
   tokens, FR-Spec style), on the answer positions. Checkpoints (head + optimiser, safetensors) every
   ``save_every`` steps; a rerun resumes from the last one.

Held-out agreement is measured on whole problems held out (the last ones by index): the share of answer
positions where the head's token equals the target's, teacher-forced (one step, from the target's features).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from autojudge_eval.engine.eagle import EagleHead
from autojudge_eval.engine.kv_cache import RowCache
from autojudge_eval.engine.stack import LayerStack, causal_mask
from autojudge_eval.fileio import atomic_write_text
from autojudge_eval.models.eagle import head_config
from autojudge_eval.models.selfdraft import append_answer, read_answers

log = logging.getLogger(__name__)


@torch.inference_mode()
def generate_batched(
    stack: LayerStack,
    prompts: Sequence[tuple[str, list[int]]],
    out_path: Path,
    *,
    eos_ids: Sequence[int],
    max_new_tokens: int,
    rows: int = 8,
) -> dict[str, dict]:
    """Greedy answers, ``rows`` problems decoded together (a finished row takes the next problem).

    Rows already in ``out_path`` are kept; each answer is appended and fsynced when it finishes. The answer
    stops before an end-of-sequence token or at ``max_new_tokens``."""
    done = read_answers(out_path)
    todo = [(pid, p) for pid, p in prompts if pid not in done and len(p) > 1]
    eos = set(int(i) for i in eos_ids)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not todo:
        return done
    max_len = max(len(p) for _, p in todo) + max_new_tokens + 1
    cache = RowCache.for_model(stack.config, max_len, rows=rows, dtype=stack.dtype, device=stack.device)
    single = stack.new_cache(max_len)
    slots: list[dict | None] = [None] * rows
    queue = list(todo)

    def fill(row: int) -> None:
        slots[row] = None
        cache.lengths[row] = 0  # an idle row writes at position 0 and is ignored
        if queue:
            pid, prompt = queue.pop(0)
            single.crop(0)
            stack.run(stack.embed(torch.tensor(prompt[:-1], device=stack.device)), single)
            cache.load(row, single, 0, len(prompt) - 1)
            slots[row] = {"id": pid, "prompt": prompt, "answer": [], "pending": prompt[-1]}

    with open(out_path, "a") as sink, tqdm(total=len(todo), desc="target answers", unit="problem") as bar:
        for row in range(rows):
            fill(row)
        while any(slots):
            ids = [s["pending"] if s else 0 for s in slots]
            _, logits, _ = stack.step_rows(ids, cache)
            best = logits.argmax(-1).tolist()
            for row, slot in enumerate(slots):
                if slot is None:
                    cache.lengths[row] = 0
                    continue
                token = best[row]
                finished = token in eos
                if not finished:
                    slot["answer"].append(token)
                    slot["pending"] = token
                if finished or len(slot["answer"]) >= max_new_tokens:
                    done[slot["id"]] = {k: slot[k] for k in ("id", "prompt", "answer")}
                    append_answer(sink, done[slot["id"]])
                    bar.update(1)
                    fill(row)
    return done


@dataclass
class Example:
    """One problem teacher-forced through the target."""

    pid: str
    ids: torch.Tensor  # (N,) prompt + answer
    features: torch.Tensor  # (N, H) the target's normed last hidden state after reading each token
    labels: torch.Tensor  # (N,) the target's greedy next token at each position
    prompt_len: int


@torch.inference_mode()
def collect_features(stack: LayerStack, rows: Sequence[dict], folder: Path) -> list[Example]:
    """One target pass per answer, cached as ``folder/<id>.safetensors`` (existing files are reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for row in tqdm(rows, desc="target features", unit="problem"):
        path = folder / f"{row['id']}.safetensors"
        ids = torch.tensor(row["prompt"] + row["answer"], dtype=torch.long)
        if len(row["answer"]) < 2:
            continue
        if path.is_file():
            saved = load_file(str(path))
            features, labels = saved["features"], saved["labels"]
        else:
            normed, logits = stack.forward(ids.to(stack.device), stack.new_cache(len(ids)))
            features, labels = normed.float().cpu().contiguous(), logits.argmax(-1).cpu().contiguous()
            save_file({"features": features, "labels": labels}, str(path) + ".tmp")
            Path(str(path) + ".tmp").rename(path)
        out.append(Example(row["id"], ids, features, labels, len(row["prompt"])))
    return out


def new_head(stack: LayerStack, seed: int = 0) -> EagleHead:
    """A fresh head (transformers' initialisation, fixed seed), in float32 for training."""
    torch.manual_seed(seed)
    head = EagleHead(head_config({}, stack), type(stack.layers[0]))
    std = getattr(stack.config, "initializer_range", 0.02)
    with torch.no_grad():
        for name, param in head.named_parameters():
            if name.endswith("layernorm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, std)
    return head.float().train()


def batch_tensors(stack: LayerStack, batch: Sequence[Example]):
    """Right-padded pairs: ((B, L, H) next-token embeddings, (B, L, H) features, (B, L, H) next features,
    (B, L) next labels, (B, L) loss mask). Pair t reads (ids[t+1], f_t) and predicts f_{t+1}, y_{t+1}."""
    length = max(len(e.ids) - 1 for e in batch)
    hidden = stack.hidden_size
    nxt_ids = torch.zeros(len(batch), length, dtype=torch.long)
    feats = torch.zeros(len(batch), length, hidden)
    goal = torch.zeros(len(batch), length, hidden)
    labels = torch.zeros(len(batch), length, dtype=torch.long)
    mask = torch.zeros(len(batch), length, dtype=torch.bool)
    for b, e in enumerate(batch):
        n = len(e.ids) - 1
        nxt_ids[b, :n] = e.ids[1:]
        feats[b, :n] = e.features[:-1]
        goal[b, :n] = e.features[1:]
        labels[b, :n] = e.labels[1:]
        mask[b, max(e.prompt_len - 2, 0) : n] = True  # pairs whose next feature predicts an answer token
    with torch.no_grad():
        embeds = stack.embed_tokens(nxt_ids.to(stack.device)).float().cpu()
    return embeds, feats, goal, labels, mask


def head_outputs(stack: LayerStack, head: EagleHead, rotary, embeds, feats) -> torch.Tensor:
    """(B, L, H) predicted next features of a batch of whole sequences (causal, no cache)."""
    length = embeds.shape[1]
    positions = torch.arange(length).unsqueeze(0)
    rope = rotary(embeds, position_ids=positions)
    return head(embeds, feats, rope, mask=causal_mask(0, length, embeds.device), positions=positions)


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 400
    batch: int = 4
    lr: float = 1e-3
    cls_weight: float = 0.1  # EAGLE's weight of the token loss beside the feature regression
    train_vocab: int = 8192  # cross-entropy over this many most frequent tokens
    save_every: int = 50
    seed: int = 0


def train_head(
    stack: LayerStack,
    examples: Sequence[Example],
    order: torch.Tensor,
    settings: TrainSettings,
    checkpoint: Path,
) -> tuple[EagleHead, list[dict]]:
    """Train a head on ``examples``; resume from ``checkpoint`` (``.safetensors`` + ``.json``) if present."""
    head = new_head(stack, settings.seed)
    rotary = type(stack.rotary_emb)(config=head.config)
    params = dict(head.named_parameters())
    opt = torch.optim.AdamW(params.values(), lr=settings.lr, weight_decay=0.0)
    step, history = _resume(checkpoint, head, opt, params)
    rows = order[: settings.train_vocab]
    lm_rows = stack.lm_head.weight.detach()[rows].float().cpu()
    position = torch.full((stack.lm_head.weight.shape[0],), -100, dtype=torch.long)
    position[rows] = torch.arange(len(rows))

    def lr_at(s: int) -> float:  # linear warm-up over 5% of the steps, cosine decay to a tenth
        warm = max(1, settings.steps // 20)
        if s < warm:
            return settings.lr * (s + 1) / warm
        return settings.lr * (
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (settings.steps - warm)))
        )

    bar = tqdm(total=settings.steps, initial=step, desc="train eagle head", unit="step")
    while step < settings.steps:
        perm = torch.randperm(len(examples), generator=torch.Generator().manual_seed(settings.seed + step))
        batch = [examples[i] for i in perm[: settings.batch].tolist()]
        embeds, feats, goal, labels, mask = batch_tensors(stack, batch)
        pred = head_outputs(stack, head, rotary, embeds, feats)
        reg = F.smooth_l1_loss(pred[mask], goal[mask])
        target = position[labels[mask]]
        cls = F.cross_entropy(pred[mask] @ lm_rows.T, target, ignore_index=-100)
        loss = reg + settings.cls_weight * cls
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 0.5)
        opt.step()
        step += 1
        history.append({"step": step, "loss": loss.item(), "reg": reg.item(), "cls": cls.item()})
        bar.set_postfix(reg=f"{reg.item():.3f}", cls=f"{cls.item():.2f}")
        bar.update(1)
        if step % settings.save_every == 0 or step == settings.steps:
            _save_checkpoint(checkpoint, head, opt, params, step, history)
    bar.close()
    return head.eval(), history


def _save_checkpoint(path: Path, head, opt, params, step: int, history: list[dict]) -> None:
    tensors = {f"param.{n}": p.detach().contiguous() for n, p in params.items()}
    for n, p in params.items():
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"{key}.{n}"] = state[key].contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path) + ".tmp")
    Path(str(path) + ".tmp").replace(path)
    atomic_write_text(path.with_suffix(".json"), json.dumps({"step": step, "history": history}) + "\n")


def _resume(path: Path, head, opt, params) -> tuple[int, list[dict]]:
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        return 0, []
    tensors, info = load_file(str(path)), json.loads(meta.read_text())
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"param.{n}"])
    for n, p in params.items():
        if f"exp_avg.{n}" in tensors:
            opt.state[p] = {
                "step": torch.tensor(float(info["step"])),
                "exp_avg": tensors[f"exp_avg.{n}"].clone(),
                "exp_avg_sq": tensors[f"exp_avg_sq.{n}"].clone(),
            }
    log.info("resuming EAGLE training from step %d (%s)", info["step"], path)
    return int(info["step"]), list(info["history"])


@torch.inference_mode()
def eagle_agreement(
    stack: LayerStack, head: EagleHead, examples: Sequence[Example], order: torch.Tensor, sizes: Sequence[int]
) -> dict[str, float]:
    """Teacher-forced next-token agreement with the target on the answer positions: full head and the
    truncated heads of ``sizes`` (keys "full" and str(size)); also ``positions``."""
    rotary = type(stack.rotary_emb)(config=head.config)
    lm = stack.lm_head.weight.detach().float().cpu()
    hits = {"full": 0, **{str(n): 0 for n in sizes}}
    total = 0
    for e in examples:
        embeds, feats, _, labels, mask = batch_tensors(stack, [e])
        pred = head_outputs(stack, head.float().cpu(), rotary, embeds, feats)[mask]
        want = labels[mask]
        hits["full"] += int(((pred @ lm.T).argmax(-1) == want).sum())
        for n in sizes:
            rows = order[:n]
            hits[str(n)] += int((rows[(pred @ lm[rows].T).argmax(-1)] == want).sum())
        total += len(want)
    return {k: v / max(total, 1) for k, v in hits.items()} | {"positions": total}


def head_card(
    *,
    prompts: int,
    max_new_tokens: int,
    train: Sequence[Example],
    held: Sequence[Example],
    settings: TrainSettings,
    history: Sequence[dict],
    agreement: dict[str, float],
    compare: tuple[str, float] | None = None,
) -> dict:
    """What the head's card (``autojudge.json``) records about its fit: the data (answers to the first
    ``prompts`` training problems, up to ``max_new_tokens`` each), the steps and settings, the loss averaged
    over the last 20 steps, the held-out agreements (``eagle_agreement``'s) and, with ``compare`` (a draft
    spec, its ``exit_agreement``), another draft's on the same positions. The caller adds the target, the
    default head vocabulary, dtype, time, machine, command and date."""
    last = history[-20:]
    return {
        "data": f"gsm8k train, problems 0..{prompts - 1}: the target's greedy answers to the zero-shot chat "
        f"prompt (up to {max_new_tokens} tokens); held out: the last {len(held)}",
        "problems": len(train) + len(held),
        "heldout_problems": len(held),
        "heldout_positions": agreement["positions"],
        "train_tokens": sum(int(len(e.ids) - e.prompt_len) for e in train),
        "steps": settings.steps,
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "final_loss": {k: sum(h[k] for h in last) / len(last) for k in ("loss", "reg", "cls")}
        if last
        else {},
        "heldout_agreement": {k: round(v, 4) for k, v in agreement.items() if k != "positions"},
        "compare": {"draft": compare[0], "heldout_agreement": round(compare[1], 4)} if compare else None,
    }


@torch.inference_mode()
def exit_agreement(exit_model, examples: Sequence[Example]) -> float:
    """The same positions' agreement for an early-exit self-draft (``engine.drafters.EarlyExit``)."""
    hits = total = 0
    for e in examples:
        ids = e.ids.to(exit_model.stack.device)
        normed = exit_model.hidden(exit_model.lower(ids, exit_model.new_cache(len(ids))))
        tokens = exit_model.tokens(normed).cpu()
        keep = slice(max(e.prompt_len - 1, 1), len(e.ids))  # the same positions as the head's mask
        hits += int((tokens[keep] == e.labels[keep]).sum())
        total += keep.stop - keep.start
    return hits / max(total, 1)
