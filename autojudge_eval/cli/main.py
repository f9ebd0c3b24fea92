"""``autojudge-eval``: the command line. Only this module prints."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from autojudge_eval.errors import AutojudgeError
from autojudge_eval.provenance import command_line, now

log = logging.getLogger("autojudge_eval")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.func(args) or 0
    except AutojudgeError as exc:
        print(f"autojudge-eval: error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autojudge-eval", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_bench(sub)
    _add_fit_draft(sub)
    for entry in DELEGATED:
        _add_delegated(sub, *entry)
    _add_cache_data(sub)
    return parser


# Subcommands whose arguments and entry point live in their own module: (name, module, stem, help).
# The module provides add_<stem>_arguments(parser) and <stem>_main(args); it is imported only when listed.
DELEGATED = (
    ("mine", "mine", "mine", "mine important-token labels (semi-greedy search) with judge features"),
    (
        "mine-summary",
        "mine",
        "summary",
        "what a mining folder holds: counts, shares, time, top swaps",
    ),
    ("train", "mine", "train", "fit a judge (scaler + logistic regression) on mined labels"),
    ("sweep", "results", "sweep", "run one lm-eval task over methods and thresholds: results/<run-id>/"),
    ("report", "results", "report", "leaderboard Markdown/HTML/CSV with plots from sweep folders"),
    ("regress", "results", "regress", "run a small fixed slice and compare it with results/baseline/"),
)


def _add_delegated(sub, name: str, module: str, stem: str, help: str) -> None:
    from importlib import import_module

    mod = import_module(f".{module}", __package__)
    p = sub.add_parser(name, help=help)
    getattr(mod, f"add_{stem}_arguments")(p)
    p.set_defaults(func=getattr(mod, f"{stem}_main"))


def _add_cache_data(sub) -> None:
    p = sub.add_parser(
        "cache-data",
        help="put a local GSM8K copy into the datasets cache as openai/gsm8k, so lm-eval's stock gsm8k "
        "tasks run offline (with HF_HUB_OFFLINE=1)",
    )
    p.add_argument("data", help="a folder holding gsm8k/{train,test}.jsonl (e.g. ../shared/data)")
    p.add_argument("--cache-dir", default=None, help="datasets cache (default: $HF_DATASETS_CACHE)")
    p.set_defaults(func=_cache_data)


def _cache_data(args) -> int:
    from autojudge_eval.benchmarks.gsm8k import cache_gsm8k_for_hub_id

    folder = cache_gsm8k_for_hub_id(args.data, args.cache_dir)
    print(f"cached {args.data} as openai/gsm8k (main) in {folder}")
    print("now: HF_HUB_OFFLINE=1 lm_eval --model autojudge --tasks gsm8k ...")
    return 0


def _model_args(p: argparse.ArgumentParser, *, draft: bool = True, threads: int | None = None) -> None:
    p.add_argument("--target", default="default", help="'default', a hub id, a local folder or a .gguf file")
    if draft:
        p.add_argument(
            "--draft", default=None, help="draft spec; default: self:default for the default target"
        )
        p.add_argument("--draft-dtype", default=None, help="run the draft in another dtype (e.g. bfloat16)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto")
    p.add_argument(
        "--threads",
        type=int,
        default=threads,
        help="torch CPU threads (default: %s)" % (threads or "torch's choice"),
    )
    p.add_argument(
        "--data",
        default=None,
        help="GSM8K jsonl file or folder (default: $AUTOJUDGE_DATA_DIR/gsm8k, else the hub)",
    )


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="target vs lossless vs autojudge vs HF generate on GSM8K test prompts")
    _model_args(p, threads=1)  # one thread: batch-1 decoding times steadily; more fight over small CPUs
    p.add_argument("--limit", type=int, default=10, help="number of GSM8K test prompts")
    p.add_argument("--window", type=int, default=4, help="draft tokens per cycle (K)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument(
        "--judge",
        default=None,
        help="judge folder, or 'gsm8k' (default: the shipped GSM8K judge for the pair when there is one, "
        "else a stand-in that accepts every mismatch)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="accept a mismatch when P(important) < this (default: the judge card's, else 0.5)",
    )
    p.add_argument("--no-hf", action="store_true", help="skip the HF generate reference")
    p.add_argument(
        "--drafts",
        default=None,
        help="several draft specs on the same target, each run as its own methods, interleaved prompt by "
        "prompt (e.g. self:default,ngram); --judge may then list several judges (e.g. accept-all,reject-all)",
    )
    p.add_argument(
        "--skip",
        default=None,
        help="comma-separated method-name patterns to leave out, e.g. 'autojudge@self*'",
    )
    p.add_argument(
        "--row-layout",
        choices=("off", "on", "both"),
        default="off",
        help="verify windows of 4..8 tokens with transposed contiguous weights (x @ W_t); 'both' runs each "
        "speculative method twice, the twin named NAME+rowlayout",
    )
    p.add_argument(
        "--no-physics", action="store_true", help="skip measuring the cost curve and the drafters' cost"
    )
    p.add_argument(
        "--json", action="store_true", help="also print the results as one JSON object on the last line"
    )
    p.set_defaults(func=cmd_bench)


def _add_fit_draft(sub) -> None:
    p = sub.add_parser("fit-draft", help="fit the self-draft adapter on the target's own GSM8K train answers")
    _model_args(p, draft=False)
    p.add_argument("--limit", type=int, default=120, help="training problems to answer")
    p.add_argument("--layers", default="8,10,12,16,20,24", help="exit layers to fit and compare")
    p.add_argument("--save-layers", default="", help="exit layers whose adapters to save, e.g. 10,24")
    p.add_argument("--ridge", default="0.001,0.01,0.1", help="ridge strengths to try (relative)")
    p.add_argument("--heldout", type=float, default=0.2, help="share of problems held out for agreement")
    p.add_argument("--head-sizes", default="4096,8192,16384", help="truncated draft-head sizes to report")
    p.add_argument(
        "--default-head", type=int, default=None, help="draft-head size the adapter uses by default"
    )
    p.add_argument("--max-new-tokens", type=int, default=320)
    p.add_argument(
        "--answers", default=None, help="resumable JSONL of target answers (default: in the cache)"
    )
    p.add_argument(
        "--out", default="selfdraft-exit{layer}.safetensors", help="adapter file ({layer} is filled in)"
    )
    p.set_defaults(func=cmd_fit_draft)


def _gsm8k_prompts(tokenizer, split: str, data: str | None, limit: int):
    from autojudge_eval.benchmarks.gsm8k import gsm8k_target, load_gsm8k
    from autojudge_eval.benchmarks.prompts import chat_prompt_ids, gsm8k_messages

    rows = load_gsm8k(split, data)
    rows = rows.select(range(min(limit, len(rows))))
    return [(chat_prompt_ids(tokenizer, gsm8k_messages(r["question"])), gsm8k_target(r)) for r in rows]


def cmd_bench(args) -> int:
    from dataclasses import replace
    from fnmatch import fnmatch

    from autojudge_eval.config import DecodeConfig, parse_judge_spec, parse_model_spec
    from autojudge_eval.engine.acceptance import ExactMatch, JudgeAccept
    from autojudge_eval.errors import ConfigError, JudgeArtifactError
    from autojudge_eval.judging.artifact import resolve_judge
    from autojudge_eval.models.pair import load_pair, with_draft
    from autojudge_eval.sweeps.bench import Method, run_methods

    drafts = [d.strip() for d in (args.drafts or "").split(",") if d.strip()]
    if drafts and args.draft:
        raise ConfigError("pass --draft or --drafts, not both")
    pair = load_pair(
        args.target,
        drafts[0] if drafts else args.draft,
        device=args.device,
        dtype=args.dtype,
        draft_dtype=args.draft_dtype,
    )
    if pair.drafter is None:
        raise ConfigError("bench compares speculative methods with target-only: it needs a draft")
    t_spec = parse_model_spec(args.target)
    pairs = [pair] + [
        with_draft(pair, d, t_spec, device=args.device, draft_dtype=args.draft_dtype) for d in drafts[1:]
    ]
    cfg = DecodeConfig(mode="lossless", window=args.window, max_new_tokens=args.max_new_tokens)
    judge_names = [j.strip() for j in (args.judge or "gsm8k").split(",") if j.strip()]
    several = len(pairs) > 1 or len(judge_names) > 1
    methods = {"target": Method(None)}
    judges: dict[str, str] = {}
    for p in pairs:
        at = f"@{p.draft_name}" if several else ""
        methods[f"lossless{at}"] = Method(p.drafter, ExactMatch(), p.draft_name)
        for name in judge_names:
            try:
                judge = resolve_judge(parse_judge_spec(name), p)
            except JudgeArtifactError as exc:
                if args.judge:
                    if several:  # an explicit judge that does not fit this draft: skip it, say so
                        print(f"note: {exc}; autojudge{at} skips judge {name}", file=sys.stderr)
                        continue
                    raise
                print(
                    f"note: {exc}; autojudge runs with a stand-in that accepts every mismatch",
                    file=sys.stderr,
                )
                judge = resolve_judge(parse_judge_spec("accept-all"), p)
            threshold = args.threshold if args.threshold is not None else judge.threshold or 0.5
            label = f"autojudge{at}[{name}]" if several else "autojudge"
            methods[label] = Method(p.drafter, JudgeAccept(judge.fn, threshold, judge.features), p.draft_name)
            fallback = judge.name == "accept-all" and name != "accept-all"
            judges[label] = {
                "judge": "stand-in: accepts every mismatch" if fallback else judge.name,
                "threshold": threshold,
            }
    if args.row_layout != "off":  # verify windows through the transposed weights (engine.stack.RowLayout)
        twins = {f"{n}+rowlayout": replace(m, row_layout=True) for n, m in methods.items() if m.drafter}
        if args.row_layout == "on":
            methods = {n: replace(m, row_layout=m.drafter is not None) for n, m in methods.items()}
        else:
            methods |= twins
    skip = [pattern for pattern in (args.skip or "").split(",") if pattern]
    methods = {n: m for n, m in methods.items() if n == "target" or not any(fnmatch(n, s) for s in skip)}
    prompts = _gsm8k_prompts(pair.tokenizer, "test", args.data, args.limit)
    report = run_methods(pair, prompts, cfg, methods, with_hf=not args.no_hf, physics=not args.no_physics)
    report["config"]["judges"] = {n: j for n, j in judges.items() if n in methods}
    if "autojudge" in judges:  # one pair, one judge: the fields of earlier runs
        report["config"] |= judges["autojudge"]
    report["config"]["drafts"] = [p.draft_name for p in pairs]
    report["config"]["command"] = command_line()
    report["config"]["date"] = now()
    print(format_bench(report))
    if args.json:
        print(json.dumps(report))
    return 0


def format_bench(report: dict) -> str:
    cfg = report["config"]
    lines = [
        f"pair {cfg['pair']}  window {cfg['window']}  {cfg['dtype']} on {cfg['device']} ({cfg['torch_threads']} threads)",
        *(f"{name} judge: {j['judge']} (threshold {j['threshold']})" for name, j in cfg["judges"].items()),
    ]
    for key, label in (("physics", ""), ("physics_row_layout", " with the row layout")):
        phys = report.get(key)
        if not phys:
            continue
        curve = "  ".join(
            f"q={q}: {phys['target_forward_ms'][q]:.1f} ms ({phys['target_forward_rel'][q]:.2f})"
            for q in phys["target_forward_ms"]
        )
        lines.append(
            f"target forward{label} at q new tokens after {phys['context_tokens']} (x one-token step): {curve}"
        )
        for name, d in phys["drafters"].items():
            lines.append(
                f"  draft {name}: {d['draft_rel_per_token']:.3f} step per draft token ({d['proposed']} proposed "
                f"in {d['propose_ms']:.2f} ms), verify {d['verify_rel']:.2f} step"
            )
    lines.append(
        f"{'method':<34} {'tok/s':>7} {'x target':>9} {'ceiling':>8} {'tok/call':>9} {'accuracy':>9} "
        f"{'same as target':>15}"
    )
    for name, m in report["methods"].items():
        same = m.get("identical_to_target")
        ceiling = m.get("ceiling_vs_target")
        lines.append(
            f"{name:<34} {m['tokens_per_s']:>7.1f} {m['speedup_vs_target']:>8.2f}x "
            f"{'' if ceiling is None else f'{ceiling:.2f}x':>8} {m['tokens_per_call']:>9.2f} "
            f"{m['accuracy']:>9.1%} {'' if same is None else f'{same:.0%}':>15}"
        )
    n = report["methods"]["target"]["prompts"]
    lines.append(
        f"{n} GSM8K test prompts; accuracy = exact final number vs gold; tok/call = new tokens per target "
        "forward; ceiling = what the measured cost curve predicts for these cycles (no overhead)"
    )
    return "\n".join(lines)


def cmd_fit_draft(args) -> int:
    from autojudge_eval.models.loading import cache_root
    from autojudge_eval.models.pair import load_pair
    from autojudge_eval.models.selfdraft import (
        adapter_card,
        collect_states,
        fit_adapters,
        generate_answers,
        to_adapter,
        token_order,
    )

    pair = load_pair(args.target, "none", device=args.device, dtype=args.dtype)
    save = [int(x) for x in args.save_layers.split(",")] if args.save_layers else []
    layers = sorted({int(x) for x in args.layers.split(",")} | set(save))
    from autojudge_eval.judging.artifact import pair_slug

    slug = pair_slug(pair.target.name)
    answers = Path(args.answers) if args.answers else cache_root() / "fit-draft" / slug / "answers.jsonl"
    prompts = _gsm8k_prompts(pair.tokenizer, "train", args.data, args.limit)
    ids = ((f"train-{i}", prompt) for i, (prompt, _) in enumerate(prompts))
    rows = generate_answers(pair.stack, ids, answers, stop=pair.stop(args.max_new_tokens), total=len(prompts))
    rows = [r for r in rows if int(r["id"].split("-")[1]) < args.limit]
    data = collect_states(pair.stack, rows, layers)
    head_sizes = [int(x) for x in args.head_sizes.split(",") if x]
    ridges = [float(r) for r in args.ridge.split(",")]
    results = fit_adapters(pair.stack, data, rows, ridges=ridges, heldout=args.heldout, head_sizes=head_sizes)
    print(f"{len(rows)} problems, {len(data.final)} answer tokens ({results[0]['heldout_tokens']} held out)")
    print(
        f"{'exit':>4} {'raw':>6} {'adapter':>8} {'ridge':>7} "
        + " ".join(f"{'head ' + str(n):>10}" for n in head_sizes)
    )
    for r in results:
        heads = " ".join(f"{r['head_agreement'][n]:>10.1%}" for n in head_sizes)
        print(f"{r['layer']:>4} {r['raw_agreement']:>6.1%} {r['agreement']:>8.1%} {r['ridge']:>7g} {heads}")
    order = token_order(rows, pair.stack.lm_head.weight.shape[0])
    for result in (r for r in results if r["layer"] in save):
        out = Path(args.out.format(layer=result["layer"]))
        card = adapter_card(result, rows, head_sizes) | {
            "target": pair.target.name,
            "default_head_vocab": args.default_head,
            "dtype": str(pair.target.dtype).replace("torch.", ""),
            "command": command_line(),
            "date": now(),
        }
        to_adapter(result, order).save(out, card)
        print(f"saved the exit-{result['layer']} adapter to {out} (+ {out.with_suffix('.json').name})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
