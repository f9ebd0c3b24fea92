"""Grading speed of two sandbox versions on the LiveCodeBench sweep's problems, interleaved in one run.

    python tests/benchmarks/speed/sandbox_speed.py --old /work/main --new . [--rounds 2]

Each version runs in its own worker process (PYTHONPATH=<checkout>) that grades the committed target
programs (``filtered_resps`` of results/livecodebench-w4/target) against their problems from
$AUTOJUDGE_DATA_DIR/livecodebench; the driver alternates old/new per problem and prints sandbox seconds
per problem (``ExecResult.total_seconds``, summed over all its tests), and the ratio new/old.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, os, sys
from pathlib import Path
from autojudge_eval.benchmarks.livecodebench import grade
from autojudge_eval.harness.task_hooks import load_problem_set
samples = sorted(Path(sys.argv[1]).glob("results/livecodebench-w4/target/*/samples_*.jsonl"))[0]
rows = [json.loads(line) for line in samples.read_text().splitlines()]
problems = load_problem_set("eval")  # the sweep's problem set, in the order its doc_ids index
items = [(problems[r["doc_id"]], r["filtered_resps"][0]) for r in rows]
print(json.dumps({"n": len(items)}), flush=True)
for line in sys.stdin:
    problem, code = items[int(line)]
    result = grade(problem, code).result
    print(json.dumps({"seconds": result.total_seconds, "passed": result.passed, "isolation": result.isolation}), flush=True)
"""


def start(checkout: str, repo: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(checkout).resolve()), "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-c", WORKER, repo], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env, cwd="/")  # fmt: skip


def ask(proc: subprocess.Popen, index: int) -> dict:
    proc.stdin.write(f"{index}\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", required=True)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems")
    parser.add_argument("--dump", default=None, help="write per-problem seconds to this JSON file")
    args = parser.parse_args()
    repo = str(Path(args.new).resolve())
    workers = {"old": start(args.old, repo), "new": start(args.new, repo)}
    n = min(json.loads(w.stdout.readline())["n"] for w in workers.values())
    n = min(n, args.limit or n)
    seconds = {"old": [], "new": []}
    verdicts = {"old": [], "new": []}
    isolation = {}
    for round_ in range(args.rounds):
        for index in range(n):
            order = ("old", "new") if (index + round_) % 2 == 0 else ("new", "old")
            for name in order:
                reply = ask(workers[name], index)
                seconds[name].append(reply["seconds"])
                verdicts[name].append(reply["passed"])
                isolation[name] = reply["isolation"]
    for w in workers.values():
        w.stdin.close()
        w.wait()
    for name in ("old", "new"):
        s = seconds[name]
        print(f"{name}: {len(s)} gradings, mean {statistics.mean(s):.3f} s, median {statistics.median(s):.3f} s, "
              f"total {sum(s):.1f} s, passed {sum(verdicts[name])}, isolation {isolation[name]}")  # fmt: skip
    if args.dump:
        Path(args.dump).write_text(json.dumps(seconds))
    ratio = sum(seconds["new"]) / sum(seconds["old"])
    print(
        f"new/old total sandbox seconds: {ratio:.3f}; same pass/fail on {sum(a == b for a, b in zip(verdicts['old'], verdicts['new'], strict=True))}/{len(verdicts['old'])}"
    )


if __name__ == "__main__":
    main()
