"""``lm_eval --model autojudge`` on a tiny random pair: registration, speed in lm-eval's outputs, exact scores,
data parallel, and one-line errors. The CLI runs in subprocesses; everything else runs in process."""

from __future__ import annotations

import json
import os
import shutil
import site
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_models
import torch
from lm_eval.api.instance import Instance

from autojudge_eval.errors import AutojudgeError, ConfigError, JudgeArtifactError
from autojudge_eval.harness import lm_eval_hook as _lm_eval_hook
from autojudge_eval.harness.backend import AutojudgeLM, request_config

REPO = Path(__file__).resolve().parents[2]
PTH = REPO / "autojudge_eval" / _lm_eval_hook.PTH_NAME
TASKS = ("autojudge_tiny", "autojudge_tiny_mc")
tiny_pair_dirs = tiny_models.tiny_pair_dirs  # the shared session fixture: (target folder, draft folder)
BOOT = """import runpy, site, sys
site.addsitedir({sitedir!r})  # processes the .pth exactly as interpreter start-up does
sys.argv[0] = "lm_eval"
runpy.run_module("lm_eval", run_name="__main__", alter_sys=True)
"""


def cli_env() -> dict[str, str]:
    # One thread: on a 2-core machine torch's default threads fight over the cores (100x slower).
    quiet = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return {**os.environ, **quiet, "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def lm_eval_cmd(tmp_path_factory) -> list[str]:
    """The ``lm_eval`` command when our .pth is installed; else Python processing the same .pth, then lm_eval."""
    if any((Path(d) / PTH.name).is_file() for d in site.getsitepackages()):
        return [str(Path(sys.executable).with_name("lm_eval"))]
    sitedir = tmp_path_factory.mktemp("site")
    shutil.copy(PTH, sitedir / PTH.name)
    boot = sitedir / "boot_lm_eval.py"
    boot.write_text(BOOT.format(sitedir=str(sitedir)))
    return [sys.executable, str(boot)]


def start_cli(cmd: list[str], args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd + args, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run_cli(cmd: list[str], args: list[str]) -> subprocess.CompletedProcess:
    proc = start_cli(cmd, args)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def read_outputs(out: Path) -> tuple[dict, dict[str, list[dict]]]:
    results = json.loads(next(out.glob("*/results_*.json")).read_text())
    samples = {
        task: [
            json.loads(line)
            for line in next(out.glob(f"*/samples_{task}_20*.jsonl")).read_text().splitlines()
        ]
        for task in TASKS
    }
    return results, samples


@pytest.fixture(scope="module")
def cli_runs(lm_eval_cmd, tiny_pair_dirs, tmp_path_factory):
    """Two `lm_eval` runs side by side (each spends seconds indexing lm-eval's own tasks).

    The good one: mode=lossless, a generation and a multiple-choice task, chat template, 1-shot as turns.
    The bad one: an unknown model_args key.
    """
    target, draft = tiny_pair_dirs
    bad = start_cli(lm_eval_cmd, [
        "--model", "autojudge", "--model_args", f"target={target},colour=blue",
        "--include_path", "tests/test_configs", "--tasks", "autojudge_tiny",
    ])  # fmt: skip
    out = tmp_path_factory.mktemp("lm_eval_out")
    good = run_cli(lm_eval_cmd, [
        "--model", "autojudge", "--model_args", f"target={target},draft={draft},mode=lossless",
        "--include_path", "tests/test_configs", "--tasks", ",".join(TASKS), "--output_path", str(out),
        "--log_samples", "--apply_chat_template", "--fewshot_as_multiturn", "--num_fewshot", "1",
        "--gen_kwargs", "do_sample=False,temperature=0",
    ])  # fmt: skip
    _, bad_stderr = bad.communicate(timeout=300)
    return good, out, (bad.returncode, bad_stderr)


@pytest.fixture(scope="module")
def cli_run(cli_runs):
    good, out, _ = cli_runs
    assert good.returncode == 0, good.stderr[-4000:]
    return good, *read_outputs(out)


@pytest.fixture(scope="module")
def target_lm(tiny_pair_dirs) -> AutojudgeLM:
    return AutojudgeLM(target=str(tiny_pair_dirs[0]), mode="target", batch_size=4)


def generation_requests(prompts_and_kwargs) -> list[Instance]:
    return [
        Instance("generate_until", {}, (prompt, dict(kwargs)), 0, ("t", i, 1))
        for i, (prompt, kwargs) in enumerate(prompts_and_kwargs)
    ]


# --- registration ----------------------------------------------------------------------------------------
def test_pth_hook_registers_lazily_and_imports_nothing(tmp_path):
    """The .pth line imports neither this package nor lm-eval nor torch; lm-eval then lists `autojudge` lazily."""
    shutil.copy(PTH, tmp_path / PTH.name)
    assert PTH.read_text().count("\n") == 1 and PTH.read_text().startswith("import ")
    code = (
        f"import site, sys; site.addsitedir({str(tmp_path)!r}); "
        "assert not [m for m in sys.modules if m.startswith(('autojudge_eval', 'lm_eval', 'torch'))]; "
        "import lm_eval.models; from lm_eval.api.registry import model_registry; assert 'hf' in model_registry; "
        "print(dict(model_registry.items())['autojudge'], 'autojudge_eval' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [_lm_eval_hook.MODEL_TARGET, "False"]


def test_hook_failure_is_a_warning_not_an_error(monkeypatch, caplog):
    import lm_eval.api.registry as registry

    frozen = registry.Registry("model")
    frozen.freeze()
    monkeypatch.setattr(registry, "model_registry", frozen)
    _lm_eval_hook.register()  # must not raise
    assert "could not register lm-eval model 'autojudge'" in caplog.text


# --- the lm_eval command line -------------------------------------------------------------------------------
def test_cli_results_json_has_speed_per_task(cli_run):
    _, results, _ = cli_run
    info = results["config"]["autojudge"]
    assert info["mode"] == "lossless" and info["world_size"] == 1
    gen = info["speed"]["autojudge_tiny"]["generate_until"]
    assert gen["requests"] == 5 and gen["new_tokens"] > 0
    assert gen["mismatches_accepted"] == 0  # lossless
    assert gen["tokens_per_call"] > 1.0 and gen["target_calls_per_token"] < 1.0  # the near draft is accepted
    assert sum(gen["accepted_histogram"]) == gen["cycles"]
    scored = info["speed"]["autojudge_tiny_mc"]["loglikelihood"]
    assert scored["requests"] == 15 and "not applicable" in scored["speculation"]
    assert "exact_match,none" in results["results"]["autojudge_tiny"]


def test_cli_sample_logs_carry_each_request_speed(cli_run):
    _, results, samples = cli_run
    records = [s["arguments"]["gen_args_0"]["arg_2"]["autojudge"] for s in samples["autojudge_tiny"]]
    assert len(records) == 5
    assert all(r["mode"] == "lossless" and r["tokens_per_s"] > 0 and r["wall_time_s"] > 0 for r in records)
    total = results["config"]["autojudge"]["speed"]["autojudge_tiny"]["generate_until"]["new_tokens"]
    assert sum(r["new_tokens"] for r in records) == total
    prompt = samples["autojudge_tiny"][0]["arguments"]["gen_args_0"]["arg_0"]
    assert (
        prompt.startswith("<|user|>") and prompt.count("<|assistant|>") == 2
    )  # chat template, 1-shot as turns


def test_cli_prints_speed_table_after_lm_eval_table(cli_run):
    proc, _, _ = cli_run
    assert proc.stdout.index("autojudge speed: mode=lossless") > proc.stdout.index("|autojudge_tiny")
    assert "|autojudge_tiny|5|generate_until|" in proc.stdout


def test_lossless_generations_equal_target_mode(cli_run, target_lm):
    _, _, samples = cli_run
    rows = samples["autojudge_tiny"]
    requests = generation_requests(
        (r["arguments"]["gen_args_0"]["arg_0"], r["arguments"]["gen_args_0"]["arg_1"]) for r in rows
    )
    assert target_lm.generate_until(requests) == [r["resps"][0][0] for r in rows]
    assert all(r["autojudge"]["mode"] == "target" for r in (req.args[2] for req in requests))


def test_cli_bad_model_args_give_one_line(cli_runs):
    returncode, stderr = cli_runs[2]
    assert returncode != 0
    assert "autojudge: error: unknown model_args colour" in stderr
    assert "Traceback" not in stderr


# --- data parallel ---------------------------------------------------------------------------------------------
DP_DRIVER = """import json, sys
import autojudge_eval
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
res = simple_evaluate(model="autojudge", model_args=sys.argv[1], tasks={tasks!r}, log_samples=True,
                      task_manager=TaskManager(include_path="tests/test_configs", include_defaults=False))
if res is not None:
    out = {{"speed": res["config"]["autojudge"]["speed"], "world_size": res["config"]["autojudge"]["world_size"],
           "resps": {{s["doc_id"]: s["resps"][0][0] for s in res["samples"]["autojudge_tiny"]}}}}
    open(sys.argv[2], "w").write(json.dumps(out))
"""


def test_two_ranks_share_requests_and_gather_speed(tiny_pair_dirs, tmp_path):
    """torchrun, 2 CPU processes over gloo: lm-eval shards the docs, rank 0 gets every rank's speed records.
    The run interleaves lossless (each rank files its own requests); one process replays both ranks' files."""
    driver = tmp_path / "dp.py"
    driver.write_text(DP_DRIVER.format(tasks=list(TASKS)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target, draft = tiny_pair_dirs
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launch = [*torchrun, "--master_port", str(port)]
    out = tmp_path / "dp.json"
    inter = tmp_path / "inter"
    args = f"target={target},draft={draft},mode=target,interleave=lossless,interleave_dir={inter}"
    proc = run_cli(launch, [str(driver), args, str(out)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    dp = json.loads(out.read_text())
    assert dp["world_size"] == 2
    gen = dp["speed"]["autojudge_tiny"]["generate_until"]
    assert gen["requests"] == 5  # rank padding is not counted twice
    assert dp["speed"]["autojudge_tiny_mc"]["loglikelihood"]["requests"] == 15
    # the same greedy text as one process with the same prompts (zero-shot, no chat template here)
    single = AutojudgeLM(target=str(target), draft=str(draft), mode="lossless")
    rows = [
        json.loads(line)
        for line in (REPO / "tests/test_configs/autojudge_tiny.jsonl").read_text().splitlines()
    ]
    kwargs = {"until": ["."], "max_gen_toks": 12, "do_sample": False, "temperature": 0.0}
    texts = single.generate_until(
        generation_requests((f"Question: {r['question']} Answer:", kwargs) for r in rows)
    )
    assert [dp["resps"][str(i)] for i in range(len(rows))] == texts
    assert sorted(p.name for p in inter.iterdir()) == [
        "lossless.rank0of2.jsonl", "lossless.rank1of2.jsonl", "target.rank0of2.jsonl", "target.rank1of2.jsonl",
    ]  # fmt: skip
    replayed = AutojudgeLM(
        target=str(target), draft=str(draft), mode="lossless", replay=str(inter / "lossless.jsonl")
    )
    requests = generation_requests((f"Question: {r['question']} Answer:", kwargs) for r in rows)
    assert replayed.generate_until(requests) == texts
    assert all(req.args[2]["autojudge"]["mode"] == "lossless" for req in requests)


# --- requests in process -----------------------------------------------------------------------------------------
def hf_reference(tiny_pair_dirs, max_length=None):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(tiny_pair_dirs[0]), device="cpu", batch_size=1, max_length=max_length)


def test_loglikelihood_equals_hf_logprobs(target_lm, tiny_pair_dirs):
    pairs = [("Question: how many apples ?", " 5"), ("Tom has", " 3 apples ."), ("", "Ann has 4 pens")] * 2
    requests = [Instance("loglikelihood", {}, p, i, ("t", i, 1)) for i, p in enumerate(pairs)]
    ours = target_lm.loglikelihood(requests)
    reference = hf_reference(tiny_pair_dirs).loglikelihood(requests)
    for (a, greedy_a), (b, greedy_b) in zip(ours, reference, strict=True):
        assert a == pytest.approx(b, abs=1e-4) and greedy_a == greedy_b
    # and by hand, from the model's own logits
    tok, model = target_lm.tokenizer, target_lm.model
    ids = tok.encode("Tom has 3 apples .", add_special_tokens=False)
    with torch.no_grad():
        logprobs = model(torch.tensor([ids[:-1]])).logits[0].log_softmax(-1)
    by_hand = sum(float(logprobs[i - 1, ids[i]]) for i in range(2, len(ids)))
    assert ours[1][0] == pytest.approx(by_hand, abs=1e-4)


def test_loglikelihood_rolling_equals_hf(tiny_pair_dirs):
    text = "Tom has 3 apples and buys 2 more . how many apples has Tom ? Ann has 10 pens ."
    requests = [Instance("loglikelihood_rolling", {}, (text,), 0, ("t", 0, 1))]
    for max_length in (None, 8):  # one window, then several
        ours = AutojudgeLM(target=str(tiny_pair_dirs[0]), mode="target", max_length=max_length)
        reference = hf_reference(tiny_pair_dirs, max_length=max_length)
        assert ours.loglikelihood_rolling(requests)[0] == pytest.approx(
            reference.loglikelihood_rolling(requests)[0], abs=1e-3
        )


def test_chat_template_interface(target_lm):
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "how many ?"}]
    assert (
        target_lm.apply_chat_template(chat)
        == "<|system|> be brief <|end|> <|user|> how many ? <|end|> <|assistant|>"
    )
    assert target_lm.chat_template(True) == target_lm.tokenizer.chat_template
    assert isinstance(target_lm.tokenizer_name, str) and "/" not in target_lm.tokenizer_name


def test_greedy_gen_kwargs_accepted_sampling_refused(target_lm):
    greedy = {"until": "?", "max_gen_toks": 3, "do_sample": False, "temperature": 0}
    cfg = request_config(target_lm.decode, greedy)
    assert cfg.stop == ("?",) and cfg.max_new_tokens == 3
    for sampling in ({"do_sample": True}, {"temperature": 0.7}, {"num_beams": 4}):
        with pytest.raises(ConfigError, match="not supported yet"):
            target_lm.generate_until(generation_requests([("Tom has", {**greedy, **sampling})]))
    with pytest.raises(ConfigError, match="gen_kwargs repetition_penalty not supported"):
        request_config(target_lm.decode, {**greedy, "repetition_penalty": 1.2})


def test_autojudge_mode_with_constant_stand_in_judges(tiny_pair_dirs, target_lm):
    target, draft = (str(p) for p in tiny_pair_dirs)
    kwargs = {"until": ["."], "max_gen_toks": 16}
    prompts = [("Question: Tom has 3 apples .", kwargs), ("Ann buys", kwargs)]
    reference = target_lm.generate_until(generation_requests(prompts))
    strict = AutojudgeLM(target=target, draft=draft, judge="reject-all")
    assert (
        strict.decode.mode == "autojudge" and strict.generate_until(generation_requests(prompts)) == reference
    )
    loose = AutojudgeLM(target=target, draft=draft, judge="accept-all")
    loose.generate_until(generation_requests(prompts))
    loose_totals, strict_totals = (
        lm.get_model_info()["autojudge"]["speed"]["all"]["generate_until"] for lm in (loose, strict)
    )
    assert strict_totals["mismatches_accepted"] == 0 < loose_totals["mismatches_accepted"]
    assert loose_totals["accepted_per_cycle"] > strict_totals["accepted_per_cycle"]


def test_lossless_keeps_max_gen_toks_when_a_stop_string_follows(tiny_pair_dirs, target_lm):
    """Found here: 16 tokens, then '?' as the 17th (the all-accepted bonus); target stops at 16, lossless at 17."""
    lossless = AutojudgeLM(target=str(tiny_pair_dirs[0]), draft=str(tiny_pair_dirs[1]), mode="lossless")
    prompts = [("Ann buys", {"until": ["?"], "max_gen_toks": 16})]
    assert lossless.generate_until(generation_requests(prompts)) == target_lm.generate_until(
        generation_requests(prompts)
    )


@pytest.mark.parametrize(
    "args, message",
    [
        ({"colour": "blue"}, "unknown model_args colour"),
        ({"judge": "missing.safetensors"}, "judge file not found: missing.safetensors"),
        ({"mode": "autojudge"}, "mode=autojudge needs judge=PATH"),
        ({"mode": "lossless", "judge": "accept-all"}, "judge= applies to mode=autojudge only"),
        ({"mode": "sampling"}, "unknown mode"),
        ({"window": 0}, "window"),
        ({"draft": "none", "mode": "lossless"}, "mode=lossless needs a draft model"),
        ({"batch_size": "many"}, "batch_size"),
        ({"pretrained": "another-model"}, "pretrained=another-model and target=.* disagree"),
    ],
)
def test_bad_model_args_are_one_line_config_errors(tiny_pair_dirs, args, message):
    with pytest.raises(ConfigError, match=message) as caught:
        AutojudgeLM(target=str(tiny_pair_dirs[0]), **args)
    assert "\n" not in str(caught.value)


def test_judge_named_by_benchmark_is_the_shipped_one_for_the_pair(tiny_pair_dirs, tmp_path, monkeypatch):
    from autojudge_eval.judging.artifact import pair_slug

    target, draft = (p.resolve() for p in tiny_pair_dirs)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(JudgeArtifactError, match="no shipped livecodebench judge for pair"):
        AutojudgeLM(target=str(target), draft=str(draft), judge="livecodebench")
    folder = tmp_path / "judges" / "livecodebench" / pair_slug(f"{target}|{draft}") / "DT"
    tiny_models.save_lenient_judge(folder, target, draft, threshold=0.2)
    lm = AutojudgeLM(target=str(target), draft=str(draft), judge="livecodebench")
    assert lm.decode.mode == "autojudge" and lm.decode.threshold == 0.2
    assert Path(lm.judge_name).resolve() == folder.resolve()
    from autojudge_eval.judging.artifact import judge_sha256

    assert lm.describe()["judge_sha256"] == judge_sha256(str(folder)) and len(judge_sha256(str(folder))) == 64


def test_existing_judge_file_loads_or_explains(tiny_pair_dirs, tmp_path):
    judge = tmp_path / "judge.safetensors"
    judge.write_bytes(b"not a judge")
    target, draft = (str(p) for p in tiny_pair_dirs)
    with pytest.raises(AutojudgeError) as caught:  # no judge loader yet, or a loader that rejects this file
        AutojudgeLM(target=target, draft=draft, judge=str(judge))
    assert "\n" not in str(caught.value)


def test_judge_folder_for_this_pair_and_for_another(tiny_pair_dirs, tmp_path):
    judges = pytest.importorskip("autojudge_eval.judging.artifact")
    target, draft = (p.resolve() for p in tiny_pair_dirs)

    def save(folder: Path, pair: str) -> str:
        card = {
            "features": "DT",
            "target_hidden_size": 64,
            "draft_hidden_size": 64,
            "pair": pair,
            "threshold": 0.3,
        }
        judges.Judge(torch.zeros(64), torch.ones(64), torch.zeros(64), torch.tensor([-5.0]), card=card).save(
            folder
        )
        return str(folder)

    ours = save(tmp_path / "ours", f"{target}|{draft}")  # P(important) = sigmoid(-5) = 0.007 everywhere
    prompts = [("Question: Tom has 3 apples .", {"until": ["."], "max_gen_toks": 16})]
    lenient = AutojudgeLM(target=str(target), draft=str(draft), judge=ours)
    assert lenient.decode.mode == "autojudge" and lenient.decode.threshold == 0.3  # the card's threshold
    strict = AutojudgeLM(target=str(target), draft=str(draft), judge=ours, threshold=0.001)
    for lm in (lenient, strict):
        lm.generate_until(generation_requests(prompts))
    taken = [lm.speed.summary()["all"]["generate_until"]["mismatches_accepted"] for lm in (lenient, strict)]
    assert taken[0] > 0 and taken[1] == 0
    other = save(tmp_path / "other", "some/target|some/draft")
    with pytest.raises(JudgeArtifactError, match="trained for pair") as caught:
        AutojudgeLM(target=str(target), draft=str(draft), judge=other)
    assert "\n" not in str(caught.value)


def test_pretrained_is_an_alias_of_target(tiny_pair_dirs, target_lm):
    """lm-eval names sample folders after ``pretrained=``; it selects the same target as ``target=``."""
    lm = AutojudgeLM(pretrained=str(tiny_pair_dirs[0]), mode="target")
    assert lm.pair.name == target_lm.pair.name
    assert lm.describe()["pair"] == target_lm.describe()["pair"]
