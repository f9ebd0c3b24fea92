"""``autojudge-eval``: the command line (only the cli package prints).

Nothing heavy is imported before the arguments are parsed: torch, transformers and lm-eval load inside the
command functions, so ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from autojudge_eval.cli.options import HelpFormatter, model_arguments
from autojudge_eval.config import DEFAULT_THREADS
from autojudge_eval.errors import AutojudgeError, ConfigError
from autojudge_eval.provenance import command_line, now

log = logging.getLogger("autojudge_eval")
BENCH_LIMIT = 5  # GSM8K test prompts of a bench; README "Set up and run" gives its time and why

DESCRIPTION = """\
AutoJudge (lossy speculative decoding with a learned judge) for a draft/target pair: measure it (bench),
mine important-token labels and train judges (mine, mine-summary, train), fit the self-draft (fit-draft)
or an EAGLE head (fit-eagle),
run lm-eval sweeps and leaderboards (sweep, report, regress). lm-eval itself: `lm_eval --model autojudge`."""
EPILOG = f"""\
first run (5 GSM8K test prompts, every method, one thread; times: README, "Set up and run"):
  AUTOJUDGE_DATA_DIR=../shared/data autojudge-eval bench
`autojudge-eval <command> --help` describes each command. Torch CPU threads default to {DEFAULT_THREADS} everywhere
(--threads, the backend's threads=, or $OMP_NUM_THREADS override it)."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _logging(args.verbose)
    offline = _offline_if_local(args)
    if offline:
        log.info("local data and models only: %s", ", ".join(offline))
    try:
        if hasattr(args, "threads"):
            from autojudge_eval.config import set_threads

            args.threads = set_threads(args.threads, "--threads")
        return args.func(args) or 0
    except AutojudgeError as exc:
        print(f"autojudge-eval: error: {exc}", file=sys.stderr)
        return 2


def _logging(verbose: bool) -> None:
    """One handler on our logger, none added to the root: a library logger with its own handler that also
    propagates to the root (huggingface_hub's retries, datasets) then prints each warning once, not twice
    (plain, then again as "WARNING logger: ..." through a root handler)."""
    ours = logging.getLogger("autojudge_eval")
    if not any(getattr(h, "_autojudge", False) for h in ours.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._autojudge = True  # type: ignore[attr-defined]
        ours.addHandler(handler)
    ours.setLevel(logging.INFO if verbose else logging.WARNING)


HUB_OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def _offline_if_local(args) -> list[str]:
    """Set HF_HUB_OFFLINE / HF_DATASETS_OFFLINE for this process (unless already set) when the data is local
    (--data or $AUTOJUDGE_DATA_DIR) and no model is a hub id, so nothing asks the hub (and waits on its
    retries) for what is on disk. Runs before huggingface_hub is imported, which reads them once."""
    import os

    from autojudge_eval.config import is_hub_id

    local_data = getattr(args, "data", None) or os.environ.get("AUTOJUDGE_DATA_DIR", "").strip()
    models = [getattr(args, key, None) for key in ("target", "draft")]
    stock_task = args.command == "sweep" and not str(args.task).startswith("autojudge_")  # lm-eval's: the hub
    if not local_data or stock_task or any(is_hub_id(m) for m in models if m):
        return []
    names = [name for name in HUB_OFFLINE if name not in os.environ]
    for name in names:
        os.environ[name] = "1"
    return [f"{name}=1" for name in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autojudge-eval", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    _add_bench(sub)
    _add_fit_draft(sub)
    _add_fit_eagle(sub)
    for entry in DELEGATED:
        _add_delegated(sub, *entry)
    _add_cache_data(sub)
    return parser


def _sub(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand with its one-line help, its description and an example (``EXAMPLES``)."""
    text, example = EXAMPLES[name]
    return sub.add_parser(
        name,
        help=help,
        description=f"{help}.\n\n{text}",
        epilog="example:\n  " + example,
        formatter_class=HelpFormatter,
    )


# Subcommands whose arguments and entry point live in their own module: (name, module, stem, help).
# The module provides add_<stem>_arguments(parser) and <stem>_main(args); it imports nothing heavy.
DELEGATED = (
    ("mine", "mine", "mine", "mine important-token labels (semi-greedy search) with judge features"),
    ("mine-summary", "mine", "summary", "what a mining folder holds: counts, shares, time, top swaps"),
    ("train", "mine", "train", "fit a judge (scaler + logistic regression) on mined labels"),
    ("sweep", "results", "sweep", "run one lm-eval task over methods and thresholds: results/<run-id>/"),
    ("report", "results", "report", "leaderboard Markdown/HTML/CSV with plots from sweep folders"),
    ("regress", "results", "regress", "run a small fixed slice and compare it with results/baseline/"),
)

# (what the command does, beyond its one-line help; one example), per subcommand.
EXAMPLES = {
    "bench": (
        "Decodes N GSM8K test prompts with target-only, lossless speculative decoding, autojudge (the judge\n"
        "shipped for the pair) and HF generate, interleaved prompt by prompt after an untimed warm-up, and\n"
        "prints tokens/s, the ratio to target-only, tokens per target call, accuracy and the share of outputs\n"
        "identical to target's. Needs GSM8K: --data or $AUTOJUDGE_DATA_DIR (else the hub).",
        "AUTOJUDGE_DATA_DIR=../shared/data autojudge-eval bench --limit 5 --no-hf",
    ),
    "fit-draft": (
        "Generates the target's greedy answers on GSM8K train problems (resumable JSONL, one line per finished\n"
        "problem), fits a ridge adapter per exit layer and prints held-out next-token agreement.",
        "autojudge-eval fit-draft --data ../shared/data --limit 120 --save-layers 24",
    ),
    "fit-eagle": (
        "Self-distillation of an EAGLE head: the target's greedy answers to GSM8K train problems (batched,\n"
        "resumable JSONL), its features (one cached file per problem), then the EAGLE loss (feature regression\n"
        "+ token cross-entropy) with resumable checkpoints. Prints held-out next-token agreement with the target\n"
        "beside the self-draft's on the same positions; saves the head in the public EAGLE layout + a card.",
        "autojudge-eval fit-eagle --data ../shared/data --limit 160 --steps 400 --out drafts/eagle-smollm2",
    ),
    "mine": (
        "Runs the semi-greedy search: at each draft/target mismatch the draft token is put in, the target\n"
        "continues, and the outcome decides the label. Labels and features land in OUT/part-i-of-n/, committed\n"
        "after every finished problem, so a killed run resumes without redoing one.",
        "autojudge-eval mine --task gsm8k --data ../shared/data --split train --limit 20",
    ),
    "mine-summary": (
        "Reads a mining folder (every part) and prints counts, the important share, time and top swaps.",
        "autojudge-eval mine-summary mined/gsm8k/<pair>",
    ),
    "train": (
        "Fits StandardScaler + logistic regression with problem-grouped folds and writes\n"
        "judges/<task>/<pair>/<features>/judge.safetensors + judge.json (the card, with thresholds).",
        "autojudge-eval train mined/gsm8k/<pair> --features DD-DT",
    ),
    "sweep": (
        "Runs one lm-eval task once per method point into results/<run-id>/, recording each point's exact\n"
        "lm_eval command and the environment; re-running the same --run-id resumes.",
        "autojudge-eval sweep --task autojudge_gsm8k --judge gsm8k --thresholds 0.3,0.5 --limit 20 --interleave",
    ),
    "report": (
        "Reads sweep folders and writes leaderboard.md/.html/.csv with plots and every row's command.",
        "autojudge-eval report results/gsm8k-w4 --out results",
    ),
    "regress": (
        "The CI gate: runs the fixed slice of results/baseline/config.toml and compares it with the baseline\n"
        "within results/baseline/tolerances.toml.",
        "autojudge-eval regress",
    ),
    "cache-data": (
        "Writes a local GSM8K copy into the datasets cache under openai/gsm8k, so lm-eval's stock gsm8k tasks\n"
        "run offline.",
        "autojudge-eval cache-data ../shared/data && HF_HUB_OFFLINE=1 lm_eval --model autojudge --tasks gsm8k",
    ),
}


def _add_delegated(sub, name: str, module: str, stem: str, help: str) -> None:
    from importlib import import_module

    mod = import_module(f".{module}", __package__)
    p = _sub(sub, name, help)
    getattr(mod, f"add_{stem}_arguments")(p)
    p.set_defaults(func=getattr(mod, f"{stem}_main"))


def _add_cache_data(sub) -> None:
    p = _sub(sub, "cache-data", "put a local GSM8K copy into the datasets cache as openai/gsm8k")
    p.add_argument("data", help="a folder holding gsm8k/{train,test}.jsonl (e.g. ../shared/data)")
    p.add_argument("--cache-dir", default=None, help="datasets cache (default: $HF_DATASETS_CACHE)")
    p.set_defaults(func=_cache_data)


def _cache_data(args) -> int:
    from autojudge_eval.benchmarks.gsm8k import cache_gsm8k_for_hub_id

    folder = cache_gsm8k_for_hub_id(args.data, args.cache_dir)
    print(f"cached {args.data} as openai/gsm8k (main) in {folder}")
    print("now: HF_HUB_OFFLINE=1 lm_eval --model autojudge --tasks gsm8k ...")
    return 0


def _model_args(p: argparse.ArgumentParser, *, draft: bool = True) -> None:
    model_arguments(p, draft=draft)
    p.add_argument(
        "--data",
        default=None,
        help="GSM8K jsonl file or folder (default: $AUTOJUDGE_DATA_DIR/gsm8k, else the hub)",
    )


def _add_bench(sub) -> None:
    p = _sub(sub, "bench", "target vs lossless vs autojudge vs HF generate on GSM8K test prompts")
    _model_args(p)
    p.add_argument(
        "--limit", type=int, default=BENCH_LIMIT, help="number of GSM8K test prompts (the first N)"
    )
    p.add_argument("--window", type=int, default=4, help="draft tokens per cycle (K)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer budget per prompt, in tokens")
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
    p = _sub(sub, "fit-draft", "fit the self-draft adapter on the target's own GSM8K train answers")
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
    p.add_argument("--max-new-tokens", type=int, default=320, help="answer budget per problem, in tokens")
    p.add_argument(
        "--answers", default=None, help="resumable JSONL of target answers (default: in the cache)"
    )
    p.add_argument(
        "--out", default="selfdraft-exit{layer}.safetensors", help="adapter file ({layer} is filled in)"
    )
    p.set_defaults(func=cmd_fit_draft)


def _add_fit_eagle(sub) -> None:
    p = _sub(sub, "fit-eagle", "train an EAGLE draft head on the target's own GSM8K train answers")
    _model_args(p, draft=False)
    p.add_argument("--limit", type=int, default=160, help="training problems to answer (the first N)")
    p.add_argument("--heldout", type=float, default=0.15, help="share of problems held out (the last ones)")
    p.add_argument("--rows", type=int, default=8, help="problems decoded together when answering")
    p.add_argument("--max-new-tokens", type=int, default=320, help="answer budget per problem, in tokens")
    p.add_argument("--steps", type=int, default=400, help="optimiser steps")
    p.add_argument("--batch", type=int, default=4, help="problems per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW, cosine decay)")
    p.add_argument("--cls-weight", type=float, default=0.1, help="weight of the token loss (EAGLE: 0.1)")
    p.add_argument("--train-vocab", type=int, default=8192, help="tokens the cross-entropy ranges over")
    p.add_argument("--head-sizes", default="4096,8192,16384", help="truncated draft heads to report")
    p.add_argument("--default-head", type=int, default=None, help="draft-head size the head uses by default")
    p.add_argument("--compare", default="self:default", help="draft whose agreement to print beside ('none')")
    p.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps")
    p.add_argument("--save-dtype", default="float32", help="dtype of the saved weights (float32, bfloat16)")
    p.add_argument("--work", default=None, help="answers, features, checkpoints (default: in the cache)")
    p.add_argument("--out", default="eagle-head", help="folder for the head (config.json + safetensors)")
    p.set_defaults(func=cmd_fit_eagle)


def _gsm8k_rows(split: str, data: str | None, limit: int):
    """The first ``limit`` rows of a GSM8K split, read before any model loads (a bad path fails first)."""
    from autojudge_eval.benchmarks.gsm8k import load_gsm8k

    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, not {limit}")
    rows = load_gsm8k(split, data, origin="--data" if data else None)
    return rows.select(range(min(limit, len(rows))))


def _gsm8k_prompts(tokenizer, rows):
    from autojudge_eval.benchmarks.gsm8k import gsm8k_target
    from autojudge_eval.benchmarks.prompts import chat_prompt_ids, gsm8k_messages

    return [(chat_prompt_ids(tokenizer, gsm8k_messages(r["question"])), gsm8k_target(r)) for r in rows]


def cmd_bench(args) -> int:
    from dataclasses import replace
    from fnmatch import fnmatch

    from autojudge_eval.config import DecodeConfig, parse_judge_spec, parse_model_spec
    from autojudge_eval.engine.acceptance import ExactMatch, JudgeAccept
    from autojudge_eval.errors import ConfigError, JudgeArtifactError
    from autojudge_eval.judging.artifact import check_judge_files, resolve_judge

    # every argument is checked before the model loads: settings, drafts, judge files, data
    drafts = [d.strip() for d in (args.drafts or "").split(",") if d.strip()]
    if drafts and args.draft:
        raise ConfigError("pass --draft or --drafts, not both")
    t_spec = parse_model_spec(args.target)
    for d in drafts or ([args.draft] if args.draft else []):
        parse_model_spec(d, allow_self=True)
    if args.threshold is not None:
        DecodeConfig(threshold=args.threshold)
    judge_names = [j.strip() for j in (args.judge or "gsm8k").split(",") if j.strip()]
    judge_specs = {name: parse_judge_spec(name) for name in judge_names}
    for spec in judge_specs.values():
        check_judge_files(spec)
    rows = _gsm8k_rows("test", args.data, args.limit)
    from autojudge_eval.models.pair import load_pair, with_draft
    from autojudge_eval.sweeps.bench import Method, run_methods

    pair = load_pair(
        args.target,
        drafts[0] if drafts else args.draft,
        device=args.device,
        dtype=args.dtype,
        draft_dtype=args.draft_dtype,
    )
    if pair.drafter is None:
        raise ConfigError("bench compares speculative methods with target-only: it needs a draft")
    pairs = [pair] + [
        with_draft(pair, d, t_spec, device=args.device, draft_dtype=args.draft_dtype) for d in drafts[1:]
    ]
    cfg = DecodeConfig(mode="lossless", window=args.window, max_new_tokens=args.max_new_tokens)
    several = len(pairs) > 1 or len(judge_names) > 1
    methods = {"target": Method(None)}
    judges: dict[str, str] = {}
    for p in pairs:
        at = f"@{p.draft_name}" if several else ""
        methods[f"lossless{at}"] = Method(p.drafter, ExactMatch(), p.draft_name)
        for name in judge_names:
            try:
                judge = resolve_judge(judge_specs[name], p)
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
    prompts = _gsm8k_prompts(pair.tokenizer, rows)
    print(
        f"bench: warm-up (one untimed generation per method, up to {args.max_new_tokens} tokens each), then "
        f"{len(prompts)} prompts x {len(methods) + (not args.no_hf)} methods",
        file=sys.stderr,
        flush=True,
    )
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
        *(
            f"{name} judge: {j['judge']} (threshold {j['threshold']:.4g})"
            for name, j in (cfg.get("judges") or {"autojudge": cfg}).items()
            if "judge" in j
        ),
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
        f"{'identical':>10} {'same answer [95% CI] (k/n)':>30} {'both blank':>11} {'lost/new/diff':>14}"
    )
    for name, m in report["methods"].items():
        same, agree = m.get("identical_to_target"), m.get("answer_agreement")
        ceiling = m.get("ceiling_vs_target")
        lines.append(
            f"{name:<34} {m['tokens_per_s']:>7.1f} {m['speedup_vs_target']:>8.2f}x "
            f"{'' if ceiling is None else f'{ceiling:.2f}x':>8} {m['tokens_per_call']:>9.2f} "
            f"{m['accuracy']:>9.1%} {'' if same is None else f'{same:.0%}':>10} {_agreement_cells(agree)}"
        )
    n = report["methods"]["target"]["prompts"]
    lines += [
        f"{n} GSM8K test prompts; accuracy = exact final number vs gold; tok/call = new tokens per target forward;",
        "ceiling = what the measured cost curve predicts for these cycles (no overhead);",
        "identical = token-identical output to target-only; same answer = the same final number as target-only "
        "over the prompts where the target gave one (k/n);",
        "both blank = neither gave a number (never counted as agreeing); lost/new/diff = the target's number "
        "missing / a number only the method gave / different numbers",
    ]
    if "autojudge" in report["methods"] and "lossless" in report["methods"]:
        lines.append(trade_off_line(report))
    return "\n".join(lines)


def _agreement_cells(agree: dict | None) -> str:
    if not agree:
        return ""
    if agree["rate"] is None:
        head = f"n/a (0/{agree['target_answered']})"
    else:
        head = (
            f"{agree['rate']:.3f} [{agree['rate_low']:.3f}, {agree['rate_high']:.3f}] "
            f"({agree['same']}/{agree['target_answered']})"
        )
    blank = f"{agree['both_blank']}/{agree['docs']}"
    split = f"{agree['target_only']}/{agree['method_only']}/{agree['different']}"
    return f"{head:>30} {blank:>11} {split:>14}"


def trade_off_line(report: dict) -> str:
    """The bench in one sentence: what autojudge buys over lossless (tokens per target call, speed) and
    what it costs (final numbers that differ from the target's, counted only where the target gave one)."""
    m = report["methods"]
    aj, ll = m["autojudge"], m["lossless"]

    def kept(method: dict) -> str:
        agree = method.get("answer_agreement") or {}
        return f"{agree.get('same', '?')} of {agree.get('target_answered', '?')}"

    return (
        f"trade-off: autojudge {aj['tokens_per_call']:.2f} tokens per target call vs lossless "
        f"{ll['tokens_per_call']:.2f}, {aj['speedup_vs_target']:.2f}x vs {ll['speedup_vs_target']:.2f}x target "
        f"speed; the target's final number kept on {kept(aj)} prompts where it gave one (lossless {kept(ll)})"
    )


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

    try:
        save = [int(x) for x in args.save_layers.split(",")] if args.save_layers else []
        layers = sorted({int(x) for x in args.layers.split(",")} | set(save))
        head_sizes = [int(x) for x in args.head_sizes.split(",") if x]
        ridges = [float(r) for r in args.ridge.split(",")]
    except ValueError as exc:
        raise ConfigError(
            f"--layers, --save-layers, --head-sizes and --ridge take comma-separated numbers: {exc}"
        ) from None
    rows = _gsm8k_rows("train", args.data, args.limit)  # before the model loads
    pair = load_pair(args.target, "none", device=args.device, dtype=args.dtype)
    from autojudge_eval.judging.artifact import pair_slug

    slug = pair_slug(pair.target.name)
    answers = Path(args.answers) if args.answers else cache_root() / "fit-draft" / slug / "answers.jsonl"
    prompts = _gsm8k_prompts(pair.tokenizer, rows)
    ids = ((f"train-{i}", prompt) for i, (prompt, _) in enumerate(prompts))
    rows = generate_answers(pair.stack, ids, answers, stop=pair.stop(args.max_new_tokens), total=len(prompts))
    rows = [r for r in rows if int(r["id"].split("-")[1]) < args.limit]
    data = collect_states(pair.stack, rows, layers)
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


def cmd_fit_eagle(args) -> int:
    import hashlib
    import math
    import time

    from autojudge_eval.config import parse_model_spec, resolve_dtype
    from autojudge_eval.judging.artifact import pair_slug
    from autojudge_eval.models import eaglefit
    from autojudge_eval.models.eagle import save_eagle
    from autojudge_eval.models.loading import cache_root
    from autojudge_eval.models.pair import load_pair, with_draft
    from autojudge_eval.models.selfdraft import token_order
    from autojudge_eval.provenance import cpu_model

    try:
        sizes = [int(x) for x in args.head_sizes.split(",") if x]
    except ValueError:
        raise ConfigError(f"--head-sizes takes comma-separated numbers, not {args.head_sizes!r}") from None
    if not 0 < args.heldout < 1:
        raise ConfigError(f"--heldout is a share of the problems in (0, 1), not {args.heldout}")
    save_dtype = resolve_dtype(args.save_dtype, "cpu")
    t_spec = parse_model_spec(args.target)
    if args.compare != "none":
        parse_model_spec(args.compare, allow_self=True)
    settings = eaglefit.TrainSettings(
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        cls_weight=args.cls_weight,
        train_vocab=args.train_vocab,
        save_every=args.save_every,
    )
    gsm = _gsm8k_rows("train", args.data, args.limit)  # before the model loads
    started = time.perf_counter()
    pair = load_pair(t_spec, "none", device=args.device, dtype=args.dtype)
    work = Path(args.work) if args.work else cache_root() / "fit-eagle" / pair_slug(pair.target.name)
    prompts = [(f"train-{i}", p) for i, (p, _) in enumerate(_gsm8k_prompts(pair.tokenizer, gsm))]
    answers = eaglefit.generate_batched(
        pair.stack,
        prompts,
        work / "answers.jsonl",
        eos_ids=pair.eos_ids,
        max_new_tokens=args.max_new_tokens,
        rows=args.rows,
    )
    rows = sorted(
        (r for r in answers.values() if int(r["id"].split("-")[1]) < len(prompts)),
        key=lambda r: int(r["id"].split("-")[1]),
    )
    examples = eaglefit.collect_features(pair.stack, rows, work / "features")
    held_n = max(1, math.ceil(len(examples) * args.heldout))
    train, held = examples[:-held_n], examples[-held_n:]
    train_ids = {e.pid for e in train}
    order = token_order([r for r in rows if r["id"] in train_ids], pair.stack.lm_head.weight.shape[0])
    key = hashlib.sha256(json.dumps([repr(settings), sorted(train_ids)]).encode()).hexdigest()[:12]
    head, history = eaglefit.train_head(pair.stack, train, order, settings, work / f"ckpt-{key}.safetensors")
    agreement = eaglefit.eagle_agreement(pair.stack, head, held, order, sizes)
    compare = None
    if args.compare != "none":
        try:
            other = with_draft(pair, args.compare, t_spec, device=args.device).drafter
            compare = eaglefit.exit_agreement(other.model, held)
        except AutojudgeError as exc:
            print(f"note: no {args.compare} agreement to compare: {exc}", file=sys.stderr)
    minutes = (time.perf_counter() - started) / 60
    print(f"{len(train)} training problems, {len(held)} held out ({agreement['positions']} answer positions)")
    print("held-out next-token agreement with the target (teacher-forced, same positions):")
    print(f"  eagle, full head: {agreement['full']:.1%}")
    for n in sizes:
        print(f"  eagle, head {n}: {agreement[str(n)]:.1%}")
    if compare is not None:
        print(f"  {args.compare}: {compare:.1%}")
    card = {
        "target": pair.target.name,
        **eaglefit.head_card(
            prompts=len(prompts),
            max_new_tokens=args.max_new_tokens,
            train=train,
            held=held,
            settings=settings,
            history=history,
            agreement=agreement,
            compare=(args.compare, compare) if compare is not None else None,
        ),
        "default_head_vocab": args.default_head,
        "dtype": str(save_dtype).replace("torch.", ""),
        "minutes": round(minutes, 1),
        "machine": f"{cpu_model()}, {args.threads} torch threads",
        "command": command_line(),
        "date": now(),
    }
    out = Path(args.out)
    save_eagle(out, head, pair.stack, vocab=order, card=card, dtype=save_dtype)  # the measured vocabulary
    print(
        f"saved the EAGLE head to {out}/ (config.json, model.safetensors, draft_vocab.safetensors, autojudge.json)"
    )
    print(f"use it: --draft eagle:{out}  ({minutes:.1f} min in all)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
