"""``autojudge-eval bench``: every method on the same prompts in one run, with ratios to target-only.

Methods run interleaved prompt by prompt, so machine noise hits them alike; a warm-up generation per
method is kept out of the figures. HF ``generate`` on the same prompts is the outside reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from autojudge_eval.benchmarks.gsm8k import answers_match, extract_final_number
from autojudge_eval.config import DecodeConfig
from autojudge_eval.engine.acceptance import AcceptRule, ExactMatch, JudgeAccept, constant_judge
from autojudge_eval.engine.decoding import DecodeStats, sync_device
from autojudge_eval.models.pair import Pair
from autojudge_eval.provenance import cpu_model


@dataclass
class MethodRun:
    """One method's generations in a bench: their summed :class:`DecodeStats`, outputs and correct answers."""

    stats: DecodeStats = field(default_factory=DecodeStats)
    correct: int = 0
    outputs: list[list[int]] = field(default_factory=list)

    def add(self, tokens: list[int], stats: DecodeStats, correct: bool) -> None:
        self.stats = self.stats + stats
        self.correct += int(correct)
        self.outputs.append(tokens)

    def summary(self) -> dict:
        """The bench JSON's per-method fields; the names mean what they mean everywhere (docs/architecture.md)."""
        s, n = self.stats, len(self.outputs)
        return {
            "tokens_per_s": s.tokens_per_s,
            "tokens_per_call": s.tokens_per_call,  # new tokens per target forward
            "accepted_per_cycle": s.accepted_per_cycle,  # accepted draft tokens per draft/verify cycle
            "target_calls_per_token": s.target_calls / s.new_tokens if s.new_tokens else 0.0,
            "mismatches_accepted": s.mismatches_accepted,
            "new_tokens": s.new_tokens,
            "seconds": s.wall_time_s,
            "accuracy": self.correct / n if n else 0.0,
            "prompts": n,
        }


def hf_generate(pair: Pair, prompt: list[int], max_new_tokens: int) -> tuple[list[int], DecodeStats]:
    """transformers' own greedy ``generate`` (dynamic KV cache), timed like our loop."""
    ids = torch.tensor([prompt], device=pair.stack.device)
    sync_device(pair.stack.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = pair.target.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=list(pair.eos_ids),
            pad_token_id=pair.eos_ids[0],
        )
    sync_device(pair.stack.device)
    tokens = out[0, len(prompt) :].tolist()
    while tokens and tokens[-1] in pair.eos_ids:
        tokens.pop()
    stats = DecodeStats(
        prompt_tokens=len(prompt), new_tokens=len(tokens), wall_time_s=time.perf_counter() - start
    )
    stats.target_calls = stats.cycles = len(tokens) + 1
    return tokens, stats


def run_bench(
    pair: Pair,
    prompts: Sequence[tuple[list[int], str | None]],
    cfg: DecodeConfig,
    *,
    judge: Callable[[torch.Tensor], float] | None = None,
    features: str = "DT",
    threshold: float = 0.5,
    with_hf: bool = True,
) -> dict:
    """Run target, lossless, autojudge (and HF generate) on ``benchmarks.prompts`` = [(ids, gold answer)]."""
    stand_in = judge is None
    rules: dict[str, tuple[str, AcceptRule | None]] = {
        "target": ("target", None),
        "lossless": ("lossless", ExactMatch()),
        "autojudge": ("autojudge", JudgeAccept(judge or constant_judge(0.0), threshold, features)),
    }
    runners: dict[str, Callable] = {
        name: (lambda p, mode=mode, rule=rule: pair.generate(p, replace(cfg, mode=mode), rule))
        for name, (mode, rule) in rules.items()
    }
    if with_hf:
        runners["hf_generate"] = lambda p: hf_generate(pair, p, cfg.max_new_tokens)
    for run in runners.values():  # warm-up, not counted
        run(prompts[0][0][:16])
    totals = {name: MethodRun() for name in runners}
    for prompt, gold in tqdm(prompts, desc="bench", unit="prompt"):
        for name, run in runners.items():
            tokens, stats = run(prompt)
            answer = extract_final_number(pair.tokenizer.decode(tokens, skip_special_tokens=True))
            totals[name].add(
                tokens, stats, answer is not None and gold is not None and answers_match(answer, gold)
            )
    return _report(pair, cfg, totals, stand_in, threshold)


def _report(
    pair: Pair, cfg: DecodeConfig, totals: dict[str, MethodRun], stand_in: bool, threshold: float
) -> dict:
    methods = {name: t.summary() for name, t in totals.items()}
    base = methods["target"]["tokens_per_s"] or 1.0
    for summary in methods.values():
        summary["speedup_vs_target"] = summary["tokens_per_s"] / base
    reference = totals["target"].outputs
    for name in ("lossless", "hf_generate", "autojudge"):
        if name in totals:
            same = sum(a == b for a, b in zip(totals[name].outputs, reference, strict=True))
            methods[name]["identical_to_target"] = same / max(len(reference), 1)
    return {
        "methods": methods,
        "config": {
            "pair": pair.name,
            "window": cfg.window,
            "max_new_tokens": cfg.max_new_tokens,
            "dtype": str(pair.target.dtype).replace("torch.", ""),
            "device": str(pair.stack.device),
            "judge": "stand-in: accepts every mismatch" if stand_in else "trained",
            "threshold": threshold,
            "torch_threads": torch.get_num_threads(),
            "cpu": cpu_model(),
            "torch": torch.__version__,
        },
    }
