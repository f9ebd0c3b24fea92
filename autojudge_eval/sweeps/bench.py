"""``autojudge-eval bench``: every method on the same prompts in one run, with ratios to target-only.

Methods run interleaved prompt by prompt, so machine noise hits them alike; a warm-up generation per
method is kept out of the figures. HF ``generate`` on the same prompts is the outside reference.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from autojudge_eval.benchmarks.gsm8k import answers_match, extract_final_number
from autojudge_eval.config import DecodeConfig
from autojudge_eval.engine.acceptance import AcceptRule, ExactMatch, JudgeAccept, constant_judge
from autojudge_eval.engine.decoding import DecodeStats, speculative_generate, sync_device, verify
from autojudge_eval.engine.drafters import Drafter
from autojudge_eval.engine.stack import LayerStack, RowLayout
from autojudge_eval.errors import ConfigError
from autojudge_eval.models.pair import Pair
from autojudge_eval.provenance import cpu_model
from autojudge_eval.sweeps.runs import tally


@dataclass
class MethodRun:
    """One method's generations in a bench: their summed :class:`DecodeStats`, outputs and correct answers."""

    stats: DecodeStats = field(default_factory=DecodeStats)
    correct: int = 0
    outputs: list[list[int]] = field(default_factory=list)
    answers: list[str | None] = field(default_factory=list)  # each generation's final number (None: none)

    def add(self, tokens: list[int], stats: DecodeStats, correct: bool, answer: str | None = None) -> None:
        self.stats = self.stats + stats
        self.correct += int(correct)
        self.outputs.append(tokens)
        self.answers.append(answer)

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


@dataclass(frozen=True)
class Method:
    """One bench method: a drafter (None: target-only) and an acceptance rule (None: lossless)."""

    drafter: Drafter | None
    rule: AcceptRule | None = None
    draft_name: str = ""
    row_layout: bool = False  # verify windows through engine.stack.RowLayout's transposed weights


def run_bench(
    pair: Pair,
    prompts: Sequence[tuple[list[int], str | None]],
    cfg: DecodeConfig,
    *,
    judge: Callable[[torch.Tensor], float] | None = None,
    features: str = "DT",
    threshold: float = 0.5,
    with_hf: bool = True,
    physics: bool = True,
) -> dict:
    """Run target, lossless, autojudge (and HF generate) on ``benchmarks.prompts`` = [(ids, gold answer)]."""
    rule = JudgeAccept(judge or constant_judge(0.0), threshold, features)
    methods = {
        "target": Method(None),
        "lossless": Method(pair.drafter, ExactMatch(), pair.draft_name),
        "autojudge": Method(pair.drafter, rule, pair.draft_name),
    }
    report = run_methods(pair, prompts, cfg, methods, with_hf=with_hf, physics=physics)
    report["config"]["judge"] = "stand-in: accepts every mismatch" if judge is None else "trained"
    report["config"]["threshold"] = threshold
    return report


def run_methods(
    pair: Pair,
    prompts: Sequence[tuple[list[int], str | None]],
    cfg: DecodeConfig,
    methods: dict[str, Method],
    *,
    with_hf: bool = True,
    physics: bool = True,
) -> dict:
    """Run ``methods`` (and HF generate) interleaved prompt by prompt on the same target; "target" must be
    one of them (the ratios' base). With ``physics`` the report also holds the measured cost curve."""
    if "target" not in methods:
        raise ConfigError("a bench needs the target-only method: the ratios are to it")
    stop = pair.stop(cfg.max_new_tokens, cfg.stop)
    layout = row_layout(pair.stack) if any(m.row_layout for m in methods.values()) else None

    def generate(prompt: list[int], m: Method):
        if layout is None:
            return speculative_generate(
                pair.stack, m.drafter, prompt, stop=stop, rule=m.rule, window=cfg.window
            )
        with layout.enabled(m.row_layout):
            return speculative_generate(
                pair.stack, m.drafter, prompt, stop=stop, rule=m.rule, window=cfg.window
            )

    runners: dict[str, Callable] = {name: (lambda p, m=m: generate(p, m)) for name, m in methods.items()}
    if with_hf:
        runners["hf_generate"] = lambda p: hf_generate(pair, p, cfg.max_new_tokens)
    # warm-up, not counted: one short generation per method (a bar, so the untimed minutes show)
    for run in tqdm(runners.values(), desc="warm-up (not timed)", unit="method"):
        run(prompts[0][0][:16])
    totals = {name: MethodRun() for name in runners}
    for prompt, gold in tqdm(prompts, desc="bench", unit="prompt"):
        for name, run in runners.items():
            tokens, stats = run(prompt)
            answer = extract_final_number(pair.tokenizer.decode(tokens, skip_special_tokens=True))
            totals[name].add(
                tokens, stats, answer is not None and gold is not None and answers_match(answer, gold), answer
            )
    report = _report(pair, cfg, totals)
    for name, m in methods.items():
        report["methods"][name]["draft"] = m.draft_name or None
    if physics:
        drafters = {m.draft_name: m.drafter for m in methods.values() if m.drafter is not None}
        texts = [p for p, _ in prompts]
        report["physics"] = measure_physics(pair.stack, drafters, texts, cfg.window)
        if layout is not None:
            with layout.enabled():
                report["physics_row_layout"] = measure_physics(pair.stack, drafters, texts, cfg.window)
        for name, m in methods.items():
            phys = report["physics_row_layout" if m.row_layout else "physics"]
            report["methods"][name]["ceiling_vs_target"] = ceiling(
                totals[name].stats, phys, m.draft_name if m.drafter is not None else None
            )
            report["methods"][name]["row_layout"] = m.row_layout
    return report


def row_layout(stack: LayerStack) -> RowLayout:
    """The stack's :class:`RowLayout`, installed on first use (it copies every linear weight once)."""
    if getattr(stack, "row_layout", None) is None:
        stack.row_layout = RowLayout(stack.model)
    return stack.row_layout


def _median_s(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def measure_physics(
    stack: LayerStack,
    drafters: dict[str, Drafter],
    prompts: Sequence[Sequence[int]],
    window: int,
    *,
    context: int = 256,
    reps: int = 7,
) -> dict:
    """What one cycle costs, measured in this run (median of ``reps``), relative to a one-token target step.

    * ``target_forward_ms`` / ``target_forward_rel``: a target forward over q = 1..K+1 new tokens after a
      context of up to ``context`` tokens (the prompts joined);
    * per drafter: ``propose_ms`` for one K-token proposal after the same context (its lookups or draft
      forwards), ``proposed`` (tokens it gave there), ``draft_rel_per_token`` (``propose_ms`` / proposed /
      step), and ``verify_rel`` (the verify forward of that proposal; a self-draft's verify runs only the
      target's top layers on states it computed).
    """
    text = [t for p in prompts for t in p][:context]
    seq = torch.tensor(text, dtype=torch.long, device=stack.device)
    base = len(seq) - 1
    cache = stack.new_cache(len(seq) + window + 2)
    features = stack.norm(stack.run(stack.embed(seq[:-1]), cache))[0]  # what an EAGLE head drafts from

    def forward(q: int) -> None:
        stack.forward(torch.cat([seq[-1:], seq[: q - 1]]), cache)  # any q tokens: the cost, not the text
        cache.crop(base)

    forward(1)
    curve = {q: _median_s(lambda q=q: forward(q), reps) for q in range(1, window + 2)}
    step = curve[1]
    out: dict = {
        "context_tokens": len(seq),
        "window": window,
        "reps": reps,
        "target_forward_ms": {q: 1000 * t for q, t in curve.items()},
        "target_forward_rel": {q: t / step for q, t in curve.items()},
        "drafters": {},
    }
    for name, drafter in drafters.items():
        drafter.reset(cache)
        drafter.observe(0, features)
        if drafter.kind in ("model", "eagle"):  # its own cache catches up on the context, outside the timing
            drafter.propose(seq, window, with_hidden=False)
            drafter.rollback(base)

        def propose(drafter=drafter):
            proposal = drafter.propose(seq, window, with_hidden=False)
            cache.crop(base)
            drafter.rollback(base)
            return proposal

        proposal = propose()
        propose_s = _median_s(propose, reps)

        def check(proposal=proposal):
            verify(stack, seq, proposal, cache)
            cache.crop(base)

        verify_s = _median_s(check, reps) if len(proposal.tokens) else curve[1]
        proposal = propose()  # leave the caches as they were
        n = len(proposal.tokens)
        out["drafters"][name] = {
            "kind": drafter.kind,
            "propose_ms": 1000 * propose_s,
            "proposed": n,
            "draft_rel_per_token": propose_s / max(n, 1) / step,
            "verify_rel": verify_s / step,
        }
    cache.crop(0)
    return out


def ceiling(stats: DecodeStats, phys: dict, draft: str | None) -> float:
    """The speed-up over target-only that the measured cost curve predicts for these cycles: new tokens ÷
    the summed relative cost of their cycles (no Python, judge or bookkeeping overhead counted).

    A cycle that proposed p tokens costs: with no proposal, one step (plus the lookup); else, for a drafter
    that reuses target states, its measured proposal + verify (at K); for any other, the target forward at
    p + 1 tokens + p draft tokens."""
    if draft is None or not stats.cycles:
        return 1.0 if stats.new_tokens else 0.0
    d, rel = phys["drafters"][draft], phys["target_forward_rel"]
    per_token = d["draft_rel_per_token"]
    total = 0.0
    for p in stats.proposed:
        if p == 0:
            total += 1.0 + (per_token if d["kind"] == "lookup" else 0.0)
        elif d["kind"] == "self":
            total += per_token * d["proposed"] + d["verify_rel"]
        else:
            total += rel[min(p + 1, max(rel))] + per_token * p
    return stats.new_tokens / total if total else 0.0


def _report(pair: Pair, cfg: DecodeConfig, totals: dict[str, MethodRun]) -> dict:
    methods = {name: t.summary() for name, t in totals.items()}
    base = methods["target"]["tokens_per_s"] or 1.0
    for summary in methods.values():
        summary["speedup_vs_target"] = summary["tokens_per_s"] / base
    reference = totals["target"].outputs
    for name in totals:
        if name != "target":
            same = sum(a == b for a, b in zip(totals[name].outputs, reference, strict=True))
            methods[name]["identical_to_target"] = same / max(len(reference), 1)  # token for token
            methods[name]["answer_agreement"] = answer_agreement(
                totals[name].answers, totals["target"].answers
            )
    return {
        "methods": methods,
        "config": {
            "pair": pair.name,
            "window": cfg.window,
            "max_new_tokens": cfg.max_new_tokens,
            "dtype": str(pair.target.dtype).replace("torch.", ""),
            "device": str(pair.stack.device),
            "torch_threads": torch.get_num_threads(),
            "cpu": cpu_model(),
            "torch": torch.__version__,
        },
    }


def answer_agreement(mine: list[str | None], target: list[str | None]) -> dict:
    """The final numbers of one method against target-only's, prompt by prompt, as an
    :class:`~autojudge_eval.sweeps.runs.Agreement` (``as_dict``): two generations without a number never
    count as agreeing; ``rate`` is the same number over the prompts where the target gave one."""
    cases = [
        (t is not None, m is not None, m is not None and t is not None and answers_match(m, t))
        for m, t in zip(mine, target, strict=True)
    ]
    return tally(cases).as_dict()
