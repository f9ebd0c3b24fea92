"""Fit the self-draft adapter: target's layer-L residual -> its last-layer residual, by closed-form ridge.

Data are the target's own greedy answers to a task's training prompts (resumable JSONL, one row per
problem). One teacher-forced pass per answer records the residual stream after every candidate exit layer,
so several exit layers are fitted and compared from one generation run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from autojudge_eval.engine.decoding import StopCriteria, speculative_generate
from autojudge_eval.engine.drafters import Adapter
from autojudge_eval.engine.stack import LayerStack

log = logging.getLogger(__name__)


@dataclass
class FitData:
    states: dict[int, torch.Tensor]  # exit layer -> (N, H) residual after that many layers
    final: torch.Tensor  # (N, H) residual after the last layer (before the final norm)
    next_token: torch.Tensor  # (N,) the target's greedy next token at each position
    group: torch.Tensor  # (N,) problem index, to split by problem


def generate_answers(
    stack: LayerStack,
    prompts: Iterable[tuple[str, list[int]]],
    out_path: Path,
    *,
    stop: StopCriteria,
    total: int | None = None,
) -> list[dict]:
    """Greedy target answers, one JSON row per problem id; rows already in ``out_path`` are kept.

    Each answer is appended and fsynced as soon as it is generated, so a kill loses only the answer in
    progress; a line torn by a kill is dropped (and its problem answered again) on the next run."""
    done = read_answers(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "a") as sink, tqdm(total=total, desc="target answers", unit="problem") as bar:
        for pid, prompt in prompts:
            if pid not in done:
                tokens, _ = speculative_generate(stack, None, prompt, stop=stop)
                done[pid] = {"id": pid, "prompt": prompt, "answer": tokens}
                append_answer(sink, done[pid])
            bar.update(1)
    return list(done.values())


def append_answer(sink, row: dict) -> None:
    """One answer row, flushed and fsynced (a kill loses at most the line being written)."""
    sink.write(json.dumps(row) + "\n")
    sink.flush()
    os.fsync(sink.fileno())


def read_answers(out_path: Path) -> dict[str, dict]:
    """The rows of an answers JSONL by problem id; a torn last line (a killed run) is cut off the file."""
    done = {}
    if out_path.is_file():
        text = out_path.read_text()
        good = 0  # bytes of complete lines
        for line in text.splitlines(keepends=True):
            try:
                row = json.loads(line) if line.endswith("\n") else None
            except json.JSONDecodeError:
                row = None
            if row is None:
                break
            done[row["id"]] = row
            good += len(line.encode())
        if good < len(text.encode()):
            log.warning(
                "%s: dropping a torn last line (a killed run); that problem is answered again", out_path
            )
            os.truncate(out_path, good)
    return done


@torch.inference_mode()
def collect_states(stack: LayerStack, rows: Sequence[dict], layers: Sequence[int]) -> FitData:
    """Teacher-force prompt + answer; keep the positions that predict answer tokens."""
    states = {layer: [] for layer in layers}
    final, nxt, group = [], [], []
    for index, row in enumerate(tqdm(rows, desc="hidden states", unit="problem")):
        ids = torch.tensor(row["prompt"] + row["answer"], device=stack.device)
        if len(row["answer"]) < 2:
            continue
        keep = slice(len(row["prompt"]) - 1, len(ids) - 1)
        cache = stack.new_cache(len(ids))
        hidden = stack.embed(ids)
        for layer in range(stack.num_layers):
            hidden = stack.run(hidden, cache, layer, layer + 1)
            if layer + 1 in states:
                states[layer + 1].append(hidden[0, keep].float().cpu())
        final.append(hidden[0, keep].float().cpu())
        nxt.append(ids[keep.start + 1 : keep.stop + 1].cpu())
        group.append(torch.full((keep.stop - keep.start,), index))
    return FitData(
        states={layer: torch.cat(chunks) for layer, chunks in states.items()},
        final=torch.cat(final),
        next_token=torch.cat(nxt),
        group=torch.cat(group),
    )


def fit_ridge(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares for y - x = x W^T + b with an L2 penalty ``ridge`` (relative to the mean eigenvalue)."""
    x64, r64 = x.double(), (y - x).double()
    mean_x, mean_r = x64.mean(0), r64.mean(0)
    xc, rc = x64 - mean_x, r64 - mean_r
    gram = xc.T @ xc
    scale = gram.diagonal().mean()
    weight = torch.linalg.solve(
        gram + ridge * scale * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ rc
    ).T
    bias = mean_r - mean_x @ weight.T
    return weight.float(), bias.float()


@torch.inference_mode()
def agreement(stack: LayerStack, x: torch.Tensor, weight, bias, target: torch.Tensor, rows=None) -> float:
    """Share of positions where the draft head's argmax equals the target's greedy token."""
    hits = 0
    for start in range(0, len(x), 1024):
        chunk = x[start : start + 1024].to(stack.device, stack.dtype)
        mapped = chunk + torch.nn.functional.linear(chunk, weight.to(chunk), bias.to(chunk))
        normed = stack.norm(mapped)
        if rows is None:
            pred = stack.lm_head(normed).argmax(-1)
        else:
            pred = rows[(normed @ stack.lm_head.weight[rows].T).argmax(-1)]
        hits += int((pred.cpu() == target[start : start + 1024]).sum())
    return hits / max(len(x), 1)


def token_order(rows: Sequence[dict], vocab_size: int) -> torch.Tensor:
    """All token ids, the most frequent in the target's answers first (the FR-Spec draft vocabulary)."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for row in rows:
        counts += torch.bincount(torch.tensor(row["answer"], dtype=torch.long), minlength=vocab_size)[
            :vocab_size
        ]
    return torch.sort(counts, descending=True, stable=True).indices


def split_by_problem(data: FitData, heldout: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks (train, test) over positions, never splitting a problem."""
    problems = torch.unique(data.group)
    perm = problems[torch.randperm(len(problems), generator=torch.Generator().manual_seed(seed))]
    test_ids = perm[: max(1, int(len(perm) * heldout))]
    test = torch.isin(data.group, test_ids)
    return ~test, test


def fit_adapters(
    stack: LayerStack,
    data: FitData,
    rows: Sequence[dict],
    *,
    ridges: Sequence[float],
    heldout: float,
    head_sizes: Sequence[int],
) -> list[dict]:
    """Fit each exit layer with each ridge; report held-out agreement (full head and truncated heads).

    The truncated heads' vocabularies count tokens of the training problems only, so held-out agreement
    stays honest; the shipped vocabulary order (see :func:`token_order`) counts every problem.
    """
    train, test = split_by_problem(data, heldout)
    vocab = stack.lm_head.weight.shape[0]
    order = token_order([rows[i] for i in torch.unique(data.group[train]).tolist()], vocab).to(stack.device)
    target = data.next_token[test]
    results = []
    for layer, x in data.states.items():
        zero = torch.zeros(x.shape[1], x.shape[1]), torch.zeros(x.shape[1])
        best = {"agreement": -1.0}
        for ridge in ridges:
            weight, bias = fit_ridge(x[train], data.final[train], ridge)
            score = agreement(stack, x[test], weight, bias, target)
            if score > best["agreement"]:
                best = {"layer": layer, "ridge": ridge, "agreement": score, "weight": weight, "bias": bias}
        best["raw_agreement"] = agreement(stack, x[test], *zero, target)
        best["head_agreement"] = {
            n: agreement(stack, x[test], best["weight"], best["bias"], target, order[:n]) for n in head_sizes
        }
        # Refit on all positions with the chosen ridge for the shipped adapter.
        best["weight"], best["bias"] = fit_ridge(x, data.final, best["ridge"])
        best["train_tokens"], best["heldout_tokens"] = int(train.sum()), int(test.sum())
        results.append(best)
        log.info(
            "exit %d: raw %.3f, adapter %.3f (ridge %g)",
            layer,
            best["raw_agreement"],
            best["agreement"],
            best["ridge"],
        )
    return results


def adapter_card(result: dict, rows: Sequence[dict], head_sizes: Sequence[int]) -> dict:
    """What the adapter's JSON card records about its fit (the caller adds target, command, date)."""
    return {
        "ridge": result["ridge"],
        "problems": len(rows),
        "tokens": result["train_tokens"] + result["heldout_tokens"],
        "heldout_tokens": result["heldout_tokens"],
        "heldout_agreement": round(result["agreement"], 4),
        "raw_exit_agreement": round(result["raw_agreement"], 4),
        "heldout_head_agreement": {str(n): round(result["head_agreement"][n], 4) for n in head_sizes},
        "data": "gsm8k train: the target's greedy answers to the zero-shot chat prompt",
    }


def to_adapter(result: dict, order: torch.Tensor) -> Adapter:
    return Adapter(weight=result["weight"], bias=result["bias"], exit_layer=result["layer"], vocab=order)
