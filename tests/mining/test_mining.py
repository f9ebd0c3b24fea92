"""Label mining on tiny random models, checked against a naive search that recomputes everything."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch
from conftest import random_eagle_head, tiny_llama

from autojudge_eval.engine.decoding import StopCriteria, speculative_generate
from autojudge_eval.engine.drafters import Adapter, EarlyExit, FullModel, ModelDrafter, SelfDrafter
from autojudge_eval.engine.eagle import EagleDrafter, EagleModel
from autojudge_eval.engine.ngram import NgramDrafter
from autojudge_eval.engine.stack import LayerStack
from autojudge_eval.errors import ConfigError, SandboxError
from autojudge_eval.mining.batch import BatchMiner
from autojudge_eval.mining.outcomes import (
    CallableOutcome,
    CodeOutcome,
    final_answer_complete,
    python_block_closed,
)
from autojudge_eval.mining.records import LABELS, done_problem_ids, read_mined
from autojudge_eval.mining.rollout import TargetRunner, draft_view, lookup
from autojudge_eval.mining.search import Miner, MineSettings, Problem, compare_no_cache, run_mining
from autojudge_eval.provenance import distributed_rank
from autojudge_eval.sandbox import ExecResult, TestOutcome, Verdict

VOCAB, EOS, MAX_NEW = 96, 5, 20
MOD3 = CallableOutcome(lambda t: t[-1] % 3 if t else -1, name="mod3")


@pytest.fixture(scope="module")
def target_model():
    return tiny_llama(0)


@pytest.fixture(scope="module")
def draft_model():
    return tiny_llama(1)


@pytest.fixture(scope="module")
def target(target_model) -> LayerStack:
    return LayerStack(target_model)


@pytest.fixture(scope="module")
def drafters(target, draft_model):
    """A separate draft model, a self-draft (exit layer 1, zero adapter) sharing the target, a lookup
    drafter and a random EAGLE head on the target's features."""
    exit_model = EarlyExit(target, Adapter(torch.zeros(64, 64), torch.zeros(64), 1))
    return {
        "model": ModelDrafter(FullModel(LayerStack(draft_model), VOCAB), "cpu"),
        "self": SelfDrafter(exit_model),
        "lookup": NgramDrafter(n_max=2, n_min=1),
        "eagle": EagleDrafter(EagleModel(random_eagle_head(target), target)),
    }


def prompts(n: int) -> list[tuple[int, ...]]:
    gen = torch.Generator().manual_seed(3)
    return [tuple(torch.randint(6, VOCAB, (int(3 + i % 5),), generator=gen).tolist()) for i in range(n)]


# --- a naive reference: no caches, everything recomputed -------------------------------------------------


@torch.no_grad()
def naive_greedy(model, seq: list[int], n_prompt: int, stop) -> list[int]:
    seq = list(seq)
    while not stop(seq[n_prompt:]):
        seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq


def naive_stop(decided=None):
    def stop(gen):
        return bool(gen) and (gen[-1] == EOS or len(gen) >= MAX_NEW or bool(decided and decided(gen)))

    return stop


@torch.no_grad()
def naive_draft(kind, draft_model, drafter, seq: list[int]) -> tuple[list[int], torch.Tensor]:
    """Greedy draft token after every prefix of ``seq`` and the draft's hidden states, in one fresh pass."""
    if kind == "lookup":  # brute force: what followed the most recent earlier match of the longest suffix
        preds = []
        for p in range(len(seq)):
            prefix, pred = seq[: p + 1], seq[p + 1] if p + 1 < len(seq) else -1  # no match: no disagreement
            for n in range(min(2, len(prefix) - 1), 0, -1):
                hits = [s for s in range(len(prefix) - n) if prefix[s : s + n] == prefix[-n:]]
                if hits:
                    pred = prefix[hits[-1] + n]
                    break
            preds.append(pred)
        return preds, torch.zeros(len(seq), 0)
    if kind == "model":
        out = draft_model.model(torch.tensor([seq]))
        hidden = out.last_hidden_state[0]
        return draft_model.lm_head(hidden).argmax(-1).tolist(), hidden
    ee = drafter.model
    hidden = ee.hidden(ee.lower(torch.tensor(seq), ee.new_cache(len(seq))))
    return ee.tokens(hidden).tolist(), hidden


def naive_search(target_model, kind, draft_model, drafter, prompt, task):
    n, stop = len(prompt), naive_stop(task.decided_fn)
    text = naive_greedy(target_model, list(prompt), n, stop)[n:]
    reference, labels, j = task.outcome(text), [], 0
    while True:
        preds = naive_draft(kind, draft_model, drafter, list(prompt) + text)[0][n - 1 : n - 1 + len(text)]
        j = next((i for i in range(j, len(text)) if preds[i] != text[i]), None)
        if j is None:
            return text, labels
        alt_prefix = list(prompt) + text[:j] + [preds[j]]
        alt = naive_greedy(target_model, alt_prefix, n, stop)[n:]
        important = task.outcome(alt) != reference
        d_hidden = naive_draft(kind, draft_model, drafter, alt_prefix)[1][-1]
        t_hidden = target_model.model(torch.tensor([alt_prefix])).last_hidden_state[0, -1]
        labels.append((j, preds[j], text[j], important, d_hidden, t_hidden))
        if not important:
            text = alt
        j += 1


# --- the search ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["model", "self", "lookup"])
def test_search_matches_naive_search(kind, target, target_model, draft_model, drafters):
    stops_on_7 = CallableOutcome(MOD3.fn, decided_fn=lambda gen: 7 in gen)
    miner = Miner(target, drafters[kind], [EOS], MineSettings(max_new_tokens=MAX_NEW))
    seen = 0
    n = 8 if kind == "lookup" else 3  # lookups on short random prompts find few mismatches
    tasks = [MOD3, stops_on_7, MOD3] if kind != "lookup" else [CallableOutcome(lambda t: sum(t) % 2)] * 8
    for prompt, task in zip(prompts(n), tasks, strict=False):
        got = miner.mine(Problem("p", prompt, task))
        text, expected = naive_search(target_model, kind, draft_model, drafters[kind], prompt, task)
        assert got.answer == text
        assert [(x.position, x.draft_token, x.target_token, x.important) for x in got.labels] == [
            e[:4] for e in expected
        ]
        if expected:
            torch.testing.assert_close(
                got.draft_hidden, torch.stack([e[4] for e in expected]), atol=1e-4, rtol=1e-4
            )
            torch.testing.assert_close(
                got.target_hidden, torch.stack([e[5] for e in expected]), atol=1e-4, rtol=1e-4
            )
        seen += sum(x.important for x in got.labels) * 100 + sum(not x.important for x in got.labels)
    assert seen % 100 and seen >= 100, "the case should hold important and unimportant mismatches"


@pytest.mark.parametrize(("kind", "rows"), [("self", 1), ("self", 3), ("self", 8), ("lookup", 3)])
def test_batched_mining_equals_the_sequential_search(kind, rows, target, drafters):
    """Problems in flight share one batch (more problems than rows, fewer, and one): same labels, texts and
    features as the batch-1 miner, whatever order problems finish in; for a self-draft (residuals captured in
    the batched step) and a lookup drafter (no draft states: only the target's)."""
    stops_on_7 = CallableOutcome(MOD3.fn, decided_fn=lambda gen: 7 in gen)
    count = 5 if kind == "self" else 16  # lookups on random prompts rarely disagree: more problems for labels
    problems = [Problem(f"p{i}", p, (MOD3, stops_on_7)[i % 2]) for i, p in enumerate(prompts(count))]
    sequential = {p.id: Miner(target, drafters[kind], [EOS], MineSettings(MAX_NEW)).mine(p) for p in problems}
    batched = BatchMiner(target, drafters[kind], [EOS], MineSettings(MAX_NEW, rows=rows))
    got = dict((problem.id, result) for problem, result in batched.mine_many(problems))
    assert sorted(got) == sorted(sequential)
    labels = 0
    for pid, want in sequential.items():
        assert got[pid].answer == want.answer and got[pid].reference == want.reference
        assert [
            (x.position, x.draft_token, x.target_token, x.important, x.outcome) for x in got[pid].labels
        ] == [(x.position, x.draft_token, x.target_token, x.important, x.outcome) for x in want.labels]
        torch.testing.assert_close(got[pid].draft_hidden, want.draft_hidden, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got[pid].target_hidden, want.target_hidden, atol=1e-4, rtol=1e-4)
        labels += len(want.labels)
    assert labels > 5 and any(not x.important for r in got.values() for x in r.labels)


def test_part_seconds_are_wall_time_when_problems_overlap(tmp_path, target, drafters):
    """Batched problems run side by side: the part's wall seconds are the run's, less than the sum of theirs."""
    problems = [Problem(f"p{i}", p, MOD3) for i, p in enumerate(prompts(8))]
    miner = BatchMiner(target, drafters["self"], [EOS], MineSettings(MAX_NEW, rows=8))
    clock = time.perf_counter()
    summary = run_mining(miner, problems, tmp_path, HEADER, checkpoint_every=4, progress=False)
    wall = time.perf_counter() - clock
    own = sum(json.loads(line)["seconds"] for line in (tmp_path / "part-00-of-01" / "problems.jsonl").open())
    assert summary["part_totals"]["problems"] == 8
    assert summary["part_totals"]["wall_seconds"] <= wall < own  # eight problems in flight at once overlap
    assert summary["part_totals"]["seconds"] == pytest.approx(own, abs=0.01)

    from autojudge_eval.mining.summary import format_markdown, summarize_mined

    mined = summarize_mined(tmp_path)
    labels = [json.loads(line) for line in (tmp_path / "part-00-of-01" / "labels.jsonl").open()]
    assert (mined["problems"], mined["mismatches"]) == (8, len(labels))
    assert mined["wall_seconds"] == round(summary["part_totals"]["wall_seconds"], 1)
    assert mined["important"] == sum(x["important"] for x in labels)
    assert sum(w["count"] for w in mined["top_swaps"]) <= len(labels)
    table = format_markdown(mined)
    assert f"| labelled mismatches | {len(labels):,} (" in table and "tiny\\|tiny-draft" in table


def test_batched_mining_refuses_a_draft_model(target, drafters):
    with pytest.raises(ConfigError, match="self-draft .* or a lookup drafter"):
        BatchMiner(target, drafters["model"], [EOS], MineSettings(MAX_NEW, rows=4))


def test_constant_outcome_ends_at_the_drafts_own_text(target, target_model, draft_model, drafters):
    """Every mismatch unimportant: each one is replaced, so the final text is the draft's greedy text."""
    constant = CallableOutcome(lambda t: 0)
    miner = Miner(target, drafters["model"], [EOS], MineSettings(max_new_tokens=MAX_NEW))
    for prompt in prompts(2):
        got = miner.mine(Problem("p", prompt, constant))
        assert got.labels and not any(x.important for x in got.labels)
        own = naive_greedy(draft_model, list(prompt), len(prompt), naive_stop())[len(prompt) :]
        assert got.answer == own


def test_every_change_important_keeps_the_reference(target, target_model, draft_model, drafters):
    exact = CallableOutcome(tuple)
    miner = Miner(target, drafters["model"], [EOS], MineSettings(max_new_tokens=MAX_NEW))
    prompt = prompts(1)[0]
    got = miner.mine(Problem("p", prompt, exact))
    assert got.answer == got.reference
    preds = naive_draft("model", draft_model, None, list(prompt) + got.reference)[0][len(prompt) - 1 :]
    assert [x.position for x in got.labels] == [i for i, t in enumerate(got.reference) if preds[i] != t]
    assert all(x.important for x in got.labels)


def first_drafts(target, drafter, tokens: list[int], start: int) -> list[int]:
    """What ``drafter`` proposes first after each prefix ``tokens[:p]``, p from ``start`` on: each from a fresh
    generation's state, fed the prefix's features by a prefill as the decoding loop feeds them."""
    drafts = []
    for p in range(start, len(tokens)):
        cache = target.new_cache(len(tokens) + 2)
        drafter.reset(cache)
        seq = torch.tensor(tokens[:p])
        drafter.observe(0, target.norm(target.run(target.embed(seq[:-1]), cache))[0])
        drafts.append(int(drafter.propose(seq, 1, with_hidden=False).tokens[0]))
    return drafts


def test_eagle_view_drafts_what_the_drafter_proposes_first(target, drafters):
    """Teacher-forced over a rollout (features recorded through lookahead windows), the view's draft at each
    answer position is the engine's first proposal there."""
    runner = TargetRunner(target, lookahead=4, capture_features=True)
    view, stop = draft_view(drafters["eagle"]), naive_stop()
    for prompt in prompts(3):
        n = len(prompt)
        roll = runner.rollout(list(prompt), target.new_cache(64), lambda s, n=n: stop(s[n:]))
        assert roll.features.shape == (len(roll.tokens) - 1, target.hidden_size)
        view.reset(64)
        drafts = view.start(roll, n)
        assert drafts == first_drafts(target, drafters["eagle"], roll.tokens, n)
        assert drafts != roll.tokens[n:]  # the random head disagrees somewhere: there is something to mine


@pytest.mark.parametrize("outcome", ["constant", "exact"])
def test_eagle_search_labels_where_the_drafter_disagrees(outcome, target, drafters):
    """Every alternative accepted (constant outcome) or rejected (exact): the labels sit where the drafter's
    first proposal after the text kept so far differs from it, so with all accepted the final text is one the
    drafter agrees with everywhere, and with all rejected it is the reference."""
    task = CallableOutcome(lambda t: 0) if outcome == "constant" else CallableOutcome(tuple)
    miner = Miner(target, drafters["eagle"], [EOS], MineSettings(max_new_tokens=MAX_NEW))
    for prompt in prompts(3):
        got, n = miner.mine(Problem("p", prompt, task)), len(prompt)
        drafts = first_drafts(target, drafters["eagle"], list(prompt) + got.answer, n)
        assert got.labels and got.draft_hidden.shape == (len(got.labels), target.hidden_size)
        if outcome == "constant":
            assert drafts == got.answer
            assert [x.draft_token for x in got.labels] == [got.answer[x.position] for x in got.labels]
        else:
            assert got.answer == got.reference
            assert [x.position for x in got.labels] == [i for i, t in enumerate(got.answer) if drafts[i] != t]


class Recorder:
    """A lossless accept rule that keeps every mismatch the decoder shows it."""

    name, needs_hidden = "record", True

    def __init__(self):
        self.seen = []

    def __call__(self, mismatch) -> bool:
        self.seen.append(mismatch)
        return False


@pytest.mark.parametrize(("kind", "window"), [("model", 3), ("self", 3), ("eagle", 1)])
def test_features_equal_the_decoders(kind, window, target, drafters):
    """With every change important the search keeps the target's text, so lossless decoding meets a subset
    of its mismatches (not those at bonus-token positions); there both must hold the same features. An EAGLE
    head's later drafts in a window read its own predicted features, not the target's: mining labels first
    drafts, which are all a window of 1 shows."""
    prompt = prompts(2)[1]
    got = Miner(target, drafters[kind], [EOS], MineSettings(MAX_NEW)).mine(
        Problem("p", prompt, CallableOutcome(tuple))
    )
    rule = Recorder()
    tokens, _ = speculative_generate(
        target, drafters[kind], list(prompt), stop=StopCriteria(MAX_NEW, (EOS,)), rule=rule, window=window
    )
    assert tokens == [t for t in got.reference if t != EOS] and len(rule.seen) >= 2
    rows, start = [], 0
    for m in rule.seen:  # the decoder's mismatches, in order, among the search's
        start = next(
            i
            for i in range(start, len(got.labels))
            if (got.labels[i].draft_token, got.labels[i].target_token) == (m.draft_token, m.target_token)
        )
        rows.append(start)
        start += 1
    torch.testing.assert_close(
        got.draft_hidden[rows], torch.stack([m.draft_hidden for m in rule.seen]), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        got.target_hidden[rows], torch.stack([m.target_hidden for m in rule.seen]), atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("lookahead", [0, 4])
def test_cached_continuation_equals_uncached_greedy(lookahead, target, target_model):
    runner = TargetRunner(target, capture_layer=2, lookahead=lookahead)
    prompt, stop = list(prompts(1)[0]), naive_stop()
    n = len(prompt)
    for j in (2, 7):  # crop to a shared prefix, substitute a token, continue (old text as lookup source)
        cache = target.new_cache(64)
        full = runner.rollout(prompt, cache, lambda s: stop(s[n:]))
        assert full.tokens == naive_greedy(target_model, prompt, n, stop)
        cache.crop(n + j)
        seq = full.tokens[: n + j] + [11]
        roll = runner.rollout(seq, cache, lambda s: stop(s[n:]), source=full.tokens[n + j + 1 :])
        assert roll.fed_start == n + j
        assert roll.tokens == naive_greedy(target_model, seq, n, stop)
        assert roll.residuals.shape[0] >= len(roll.tokens) - 1 - roll.fed_start


def test_lookup_prefers_the_aligned_match():
    source = [1, 2, 3, 9, 1, 2, 4, 5]
    assert lookup([7, 1, 2], source, 3, 3, 0) == ([3, 9, 1], 2)
    assert lookup([7, 1, 2], source, 3, 3, 5) == ([4, 5], 6)
    assert lookup([8], source, 3, 3, 0) == ([], 1)


def test_compare_no_cache_reports_same_labels(target, drafters):
    report = compare_no_cache(
        target, drafters["model"], [EOS], [Problem("a", prompts(1)[0], MOD3)], MineSettings(MAX_NEW)
    )
    assert set(report["modes"]) == {"cached", "cached_no_lookahead", "no_cache"}
    assert report["baseline"] == "no_cache"
    assert all(m["same_labels_as_baseline"] for m in report["modes"].values())


def test_outcome_decided_rules():
    assert final_answer_complete("so 3+4=7.\nThe final answer is 7\n")
    assert final_answer_complete("The final answer is $1,200 dollars")
    assert not final_answer_complete("The final answer is 12")  # may go on: 123, 12.5
    assert not final_answer_complete("The final answer is 12.")
    assert python_block_closed("Here:\n```python\nprint(1)\n```")
    assert not python_block_closed("```python\nprint(1)\n")
    assert not python_block_closed("```text\n1 2\n```\n")


class FakeExecutor:
    """Stands in for sandbox.CachedExecutor: "print(1)" passes, "boom" breaks the sandbox, else wrong output."""

    def __init__(self):
        self.programs = []

    def run(self, code, tests, *, tests_key=None):
        self.programs.append(code)
        if "boom" in code:
            outcome = TestOutcome(Verdict.SANDBOX_ERROR, detail="no namespaces")
        elif "print(1)" in code:
            outcome = TestOutcome(Verdict.PASSED)
        else:
            outcome = TestOutcome(Verdict.WRONG_ANSWER, output_sha256=code[-4:])
        return ExecResult((outcome,), 0.0, "test")


def test_code_outcome_compares_behaviour_of_canonical_programs():
    texts = [
        "```python\nprint(1)\n```",
        "Sure:\n```python\n# one\nprint( 1 )\n```\nDone",
        "```python\nprint(2)\n```",
        "```python\nprint(3)\n```",
        "```python\nboom()\n```",
    ]
    executor = FakeExecutor()
    task = CodeOutcome(lambda t: texts[t[0]], ("a test",), executor, tests_key="k")
    outcomes = [task.outcome([i]) for i in range(4)]
    assert task.same(outcomes[0], outcomes[1]) and len(executor.programs) == 3  # one run for 0 and 1
    assert not task.same(outcomes[2], outcomes[3]) and not task.same(outcomes[0], outcomes[2])
    lenient = CodeOutcome(task.decode, ("a test",), executor, pass_fail_only=True, tests_key="k")
    assert lenient.same(outcomes[2], outcomes[3]) and not lenient.same(outcomes[0], outcomes[2])
    with pytest.raises(SandboxError):
        task.outcome([4])


# --- records, resume, shards ---------------------------------------------------------------------------


HEADER = {
    "task": "mod3",
    "pair": "tiny|tiny-draft",
    "target_hidden_size": 64,
    "draft_hidden_size": 64,
    "label_settings": {"max_new_tokens": MAX_NEW},
}


class Killed(BaseException):
    pass


def _signature(mined):
    return (
        [{k: v for k, v in vars(x).items() if k != "seconds"} for x in mined.labels],
        mined.draft_hidden,
        mined.target_hidden,
    )


def test_resume_after_kill_gives_identical_records(tmp_path, target, drafters):
    problems = [Problem(f"p{i}", p, MOD3) for i, p in enumerate(prompts(6))]
    miner = Miner(target, drafters["model"], [EOS], MineSettings(MAX_NEW))
    run_mining(miner, problems, tmp_path / "clean", HEADER, checkpoint_every=2, progress=False)

    def killer(tokens):  # dies while mining the 4th problem, after one checkpoint of 2 problems + 1 pending
        raise Killed

    dying = problems[:3] + [Problem("p3", problems[3].prompt_ids, CallableOutcome(killer))] + problems[4:]
    with pytest.raises(Killed):
        run_mining(miner, dying, tmp_path / "run", HEADER, checkpoint_every=2, progress=False)
    part = tmp_path / "run" / "part-00-of-01"
    assert done_problem_ids(tmp_path / "run") == {"p0", "p1"}
    with open(part / LABELS, "a") as handle:  # a torn write after the last commit
        handle.write('{"problem_id": "p2", "ind')
    (part / "features-00009.safetensors").write_bytes(b"junk")
    summary = run_mining(miner, problems, tmp_path / "run", HEADER, checkpoint_every=2, progress=False)
    assert summary["skipped_done"] == 2 and summary["problems"] == 4
    resumed, clean = _signature(read_mined(tmp_path / "run")), _signature(read_mined(tmp_path / "clean"))
    assert resumed[0] == clean[0]
    assert torch.equal(resumed[1], clean[1]) and torch.equal(resumed[2], clean[2])
    assert not (part / "features-00009.safetensors").exists()


def test_reopening_with_another_pair_is_refused(tmp_path, target, drafters):
    miner = Miner(target, drafters["self"], [EOS], MineSettings(MAX_NEW))
    problems = [Problem("p0", prompts(1)[0], MOD3)]
    run_mining(miner, problems, tmp_path, HEADER, progress=False)
    with pytest.raises(ConfigError, match="pair"):
        run_mining(miner, problems, tmp_path, {**HEADER, "pair": "other"}, progress=False)


def test_shards_partition_the_problems(tmp_path, target, drafters):
    problems = [Problem(f"p{i}", p, MOD3) for i, p in enumerate(prompts(5))]
    miner = Miner(target, drafters["self"], [EOS], MineSettings(MAX_NEW))
    for index in (0, 1):
        run_mining(miner, problems, tmp_path, HEADER, shard=(index, 2), progress=False)
    parts = sorted(p.name for p in tmp_path.iterdir())
    assert parts == ["part-00-of-02", "part-01-of-02"]
    mined = read_mined(tmp_path)
    assert sorted(p.problem_id for p in mined.problems) == [f"p{i}" for i in range(5)]


def _rank_worker(rank: int, out: str) -> None:
    """One of two processes, as torchrun starts them: RANK / WORLD_SIZE in the environment."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    problems = [Problem(f"p{i}", (7 + i, 9, 11), MOD3) for i in range(4)]
    drafter = ModelDrafter(FullModel(LayerStack(tiny_llama(1)), VOCAB), "cpu")
    miner = Miner(LayerStack(tiny_llama(0)), drafter, [EOS], MineSettings(12))
    run_mining(miner, problems, Path(out), HEADER, shard=distributed_rank(), progress=False)


def test_two_ranks_mine_disjoint_halves(tmp_path):
    context = multiprocessing.get_context("fork")  # children inherit the imports: no start-up cost
    procs = [context.Process(target=_rank_worker, args=(rank, str(tmp_path))) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    ids = {}
    for part in sorted(tmp_path.glob("part-*")):
        ids[part.name] = [
            json.loads(x)["problem_id"] for x in (part / "problems.jsonl").read_text().splitlines()
        ]
    assert ids == {"part-00-of-02": ["p0", "p2"], "part-01-of-02": ["p1", "p3"]}


@pytest.mark.parametrize("rows", [1, 2])
def test_the_bar_moves_with_every_label(tmp_path, target, drafters, monkeypatch, rows):
    """Labels, tokens and rates reach the bar as each mismatch is decided, not once per problem."""
    import autojudge_eval.mining.search as search

    shown = []

    class Bar:
        def __init__(self, *args, **kwargs):
            self.n = 0

        def update(self, k=1):
            self.n += k
            shown.append(("problem", self.n))

        def set_postfix(self, **fields):
            shown.append(("label", fields))

        def close(self):
            pass

    monkeypatch.setattr(search, "tqdm", Bar)
    problems = [Problem(f"p{i}", p, MOD3) for i, p in enumerate(prompts(3))]
    miner = search.make_miner(target, drafters["self"], [EOS], MineSettings(MAX_NEW, rows=rows))
    summary = run_mining(miner, problems, tmp_path, HEADER, progress=False)
    labels = [fields for kind, fields in shown if kind == "label"]
    assert summary["mismatches"] > 0 and len(labels) == summary["mismatches"]
    assert [f["labels"] for f in labels] == list(range(1, summary["mismatches"] + 1))
    assert {"important", "per_min", "tok_s"} <= set(labels[-1])
    first_problem = next(i for i, (kind, _) in enumerate(shown) if kind == "problem")
    assert first_problem > 0  # labels were shown before the first problem finished
    assert miner.on_label is None  # the hook does not outlive the run
