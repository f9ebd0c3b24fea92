"""A real SIGKILL right after a mined problem finishes: the problem is committed and a resume skips it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama

from autojudge_eval.engine.drafters import Adapter, EarlyExit, SelfDrafter
from autojudge_eval.engine.stack import LayerStack
from autojudge_eval.mining.outcomes import CallableOutcome
from autojudge_eval.mining.records import (
    MANIFEST,
    PROBLEMS,
    ProblemRecord,
    done_problem_ids,
    read_committed_jsonl,
)
from autojudge_eval.mining.search import MineSettings, Problem, make_miner, run_mining

EOS, MAX_NEW = 5, 16
HEADER = {
    "task": "mod3",
    "pair": "tiny|self",
    "target_hidden_size": 64,
    "draft_hidden_size": 64,
    "label_settings": {"max_new_tokens": MAX_NEW},
}
PROMPTS = [(7, 9, 11), (8, 12, 30, 41), (13, 17, 19), (21, 22, 23, 24, 25)]

# The child mines PROMPTS with run_mining's defaults. As soon as the miner has handed one problem over as
# finished, the next outcome any other problem asks for writes a marker (which problem waits, which finished)
# and hangs: the parent kills the process right then, with that problem finished and others in flight.
CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from test_kill_resume import HEADER, PROMPTS, miner_for, problems
from autojudge_eval.mining.search import run_mining
out, marker, rows = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
finished = []

def hang_once_another_finished(pid):
    def outcome(tokens):
        if set(finished) - {pid}:
            marker.write_text(json.dumps({"waiting": pid, "finished": finished}))
            while True:
                time.sleep(1)
        return tokens[-1] % 3 if tokens else -1
    return outcome

miner = miner_for(rows)
inner = miner.mine_many

def mine_many(todo):
    for problem, result in inner(todo):
        finished.append(problem.id)
        yield problem, result

miner.mine_many = mine_many
outcomes = {f"p{i}": hang_once_another_finished(f"p{i}") for i in range(len(PROMPTS))}
run_mining(miner, problems(outcomes), out, HEADER, progress=False)
"""


def miner_for(rows: int):
    """The tiny target with a zero-adapter self-draft (exit layer 1), batched when ``rows`` > 1."""
    target = LayerStack(tiny_llama(0))
    drafter = SelfDrafter(EarlyExit(target, Adapter(torch.zeros(64, 64), torch.zeros(64), 1)))
    return make_miner(target, drafter, [EOS], MineSettings(MAX_NEW, rows=rows))


def problems(outcomes: dict | None = None, calls: dict | None = None) -> list[Problem]:
    """PROMPTS as problems p0..p3 scored by the last token mod 3; ``calls`` counts outcomes per problem."""

    def counted(pid, fn):
        def outcome(tokens):
            if calls is not None:
                calls[pid] = calls.get(pid, 0) + 1
            return fn(tokens)

        return outcome

    def mod3(tokens):
        return tokens[-1] % 3 if tokens else -1

    fns = {f"p{i}": (outcomes or {}).get(f"p{i}", mod3) for i in range(len(PROMPTS))}
    return [
        Problem(pid, PROMPTS[i], CallableOutcome(counted(pid, fns[pid]), name="mod3"))
        for i, pid in enumerate(fns)
    ]


@pytest.mark.parametrize("rows", [1, 2])
def test_sigkill_after_a_finished_problem_loses_nothing(tmp_path, rows):
    out, marker = tmp_path / "mined", tmp_path / "marker"
    tests = str(Path(__file__).resolve().parent)
    path = [
        tests,
        str(Path(tests).parent),
        os.environ.get("PYTHONPATH", ""),
    ]  # this file, conftest, the package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(out), str(marker), str(rows)], env=env)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert child.poll() is None, f"the mining child exited early ({child.returncode})"
            assert time.monotonic() < deadline, "no problem finished in the mining child"
            time.sleep(0.2)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    part = out / "part-00-of-01"
    assert (part / MANIFEST).is_file(), "the killed run committed nothing, though a problem had finished"
    manifest = json.loads((part / MANIFEST).read_text())
    done_before = {
        p.problem_id for p in read_committed_jsonl(part / PROBLEMS, manifest["problems_bytes"], ProblemRecord)
    }
    seen = json.loads(marker.read_text())  # the problem that hung, in flight; those finished before it
    waiting, finished = seen["waiting"], set(seen["finished"])
    assert finished and finished <= done_before, (
        f"finished {sorted(finished)}, committed {sorted(done_before)}"
    )
    assert waiting not in done_before

    calls: dict[str, int] = {}
    summary = run_mining(miner_for(rows), problems(calls=calls), out, HEADER, progress=False)
    assert summary["skipped_done"] == len(done_before)
    assert not set(calls) & done_before, f"the resumed run redid {sorted(set(calls) & done_before)}"
    assert waiting in calls and done_problem_ids(out) == {f"p{i}" for i in range(len(PROMPTS))}
