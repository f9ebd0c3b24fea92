"""Mining on a batching engine (``mining.stream``): the same search as the HF miner, continuations served as
streamed requests. A fake engine here generates greedily with the tiny target itself, in an order and in
chunks that differ from the HF miner's; the real one (vLLM) is checked in ``tests/on_vllm``."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

from autojudge_eval.engine.drafters import Adapter, EarlyExit, SelfDrafter
from autojudge_eval.engine.ngram import NgramDrafter
from autojudge_eval.engine.stack import LayerStack
from autojudge_eval.errors import AutojudgeError, ConfigError
from autojudge_eval.mining.outcomes import CallableOutcome
from autojudge_eval.mining.search import Miner, MineSettings, Problem, compare_no_cache
from autojudge_eval.mining.stream import StreamMiner, replay_target_features

VOCAB, EOS, MAX_NEW = 96, 5, 20
MOD3 = CallableOutcome(lambda t: t[-1] % 3 if t else -1, name="mod3")
DECIDED_AT_12 = CallableOutcome(MOD3.fn, decided_fn=lambda gen: len(gen) >= 12)


@pytest.fixture(scope="module")
def model():
    return tiny_llama(0)


@pytest.fixture(scope="module")
def target(model) -> LayerStack:
    return LayerStack(model)


class FakeEngine:
    """Greedy requests on the tiny model, recomputed from scratch each token (no cache to get wrong).

    Each poll advances the requests in a rotating order and hands back up to ``chunk`` tokens per request,
    so tokens arrive in deltas of varying size and requests finish out of submission order. ``cut_short``
    ends every request after that many tokens (an engine whose context is too short)."""

    def __init__(self, model, eos: int, chunk: int = 3, cut_short: int | None = None) -> None:
        self.model, self.eos, self.chunk, self.cut_short = model, eos, chunk, cut_short
        self.live: dict[str, tuple[list[int], int, list[int]]] = {}
        self.cancelled: list[str] = []
        self.turn = 0
        self.max_live = 0

    def submit(self, key, prompt, max_tokens) -> None:
        assert key not in self.live and max_tokens >= 1
        self.live[key] = (list(prompt), max_tokens, [])
        self.max_live = max(self.max_live, len(self.live))

    @torch.no_grad()
    def _next(self, seq: list[int]) -> int:
        return int(self.model(torch.tensor([seq])).logits[0, -1].argmax())

    def poll(self):
        keys = list(self.live)
        self.turn += 1
        keys = keys[self.turn % len(keys) :] + keys[: self.turn % len(keys)] if keys else keys
        out = []
        for n, key in enumerate(keys):
            seq, budget, got = self.live[key]
            new, finished = [], False
            for _ in range(1 + (n + self.turn) % self.chunk):
                token = self._next(seq + got)
                got.append(token)
                new.append(token)
                limit = budget if self.cut_short is None else min(budget, self.cut_short)
                if token == self.eos or len(got) >= limit:
                    finished = True
                    break
            if finished:
                del self.live[key]
            out.append((key, new, finished))
        return out

    def cancel(self, key) -> None:
        self.cancelled.append(key)
        self.live.pop(key, None)


def prompts(n: int) -> list[tuple[int, ...]]:
    gen = torch.Generator().manual_seed(3)
    return [tuple(torch.randint(6, VOCAB, (int(3 + i % 5),), generator=gen).tolist()) for i in range(n)]


@pytest.mark.parametrize("rows", [1, 4])
def test_streamed_mining_equals_the_hf_search(rows, target, model):
    """Same labels, texts and DT features as the batch-1 HF miner, whatever order requests finish in; an
    outcome decided early cancels its request where the HF runner stops."""
    drafter = NgramDrafter(n_max=2, n_min=1)
    problems = [Problem(f"p{i}", p, (MOD3, DECIDED_AT_12)[i % 2]) for i, p in enumerate(prompts(16))]
    want = {p.id: Miner(target, drafter, [EOS], MineSettings(MAX_NEW)).mine(p) for p in problems}
    engine = FakeEngine(model, EOS)
    miner = StreamMiner(engine, target, drafter, [EOS], MineSettings(MAX_NEW, rows=rows))
    got = {p.id: r for p, r in miner.mine_many(problems)}
    assert sorted(got) == sorted(want) and engine.max_live <= rows and not engine.live
    labels = 0
    for pid, w in want.items():
        g = got[pid]
        assert g.answer == w.answer and g.reference == w.reference
        assert [
            (x.position, x.draft_token, x.target_token, x.important, x.outcome, x.continuation_tokens)
            for x in g.labels
        ] == [
            (x.position, x.draft_token, x.target_token, x.important, x.outcome, x.continuation_tokens)
            for x in w.labels
        ]
        torch.testing.assert_close(g.target_hidden, w.target_hidden, atol=1e-4, rtol=1e-4)
        assert g.draft_hidden.shape == w.draft_hidden.shape == (len(w.labels), 0)
        labels += len(w.labels)
    assert labels > 5
    assert any(not x.important for r in got.values() for x in r.labels)
    assert any(x.important for r in got.values() for x in r.labels)
    assert engine.cancelled, "outcomes decided before EOS or the budget cancel their requests"


def test_replay_refuses_labels_that_do_not_fit_the_text(target):
    from autojudge_eval.mining.records import MismatchLabel

    label = MismatchLabel("p", 0, 1, draft_token=9, target_token=8, important=False,
                          reference_outcome="a", outcome="a", continuation_tokens=1, seconds=0.0)  # fmt: skip
    with pytest.raises(RuntimeError, match="not the draft token 9"):
        replay_target_features(target, [6, 7], [8, 8, 8], [label])


def test_a_continuation_the_engine_ends_early_fails_its_problem_only(target, model):
    drafter = NgramDrafter(n_max=2, n_min=1)
    problems = [Problem(f"p{i}", p, MOD3) for i, p in enumerate(prompts(3))]
    miner = StreamMiner(
        FakeEngine(model, EOS, cut_short=2), target, drafter, [EOS], MineSettings(MAX_NEW, rows=2)
    )
    results = list(miner.mine_many(problems))
    assert sorted(p.id for p, _ in results) == ["p0", "p1", "p2"]
    assert all(isinstance(r, AutojudgeError) and "max_model_len" in str(r) for _, r in results)


def test_drafters_with_states_are_refused(target):
    drafter = SelfDrafter(EarlyExit(target, Adapter(torch.zeros(64, 64), torch.zeros(64), 1)))
    with pytest.raises(ConfigError, match="lookup drafter"):
        StreamMiner(None, target, drafter, [EOS], MineSettings(MAX_NEW, rows=2))


def test_compare_takes_an_engine_mode_and_another_baseline(target, model):
    drafter = NgramDrafter(n_max=2, n_min=1)
    problems = [Problem(f"p{i}", p, MOD3) for i, p in enumerate(prompts(6))]
    settings = MineSettings(MAX_NEW, rows=3)
    engines = {"fake": lambda: StreamMiner(FakeEngine(model, EOS), target, drafter, [EOS], settings)}
    report = compare_no_cache(target, drafter, [EOS], problems, settings, modes=["fake"], engines=engines,
                              baseline="batched")  # fmt: skip
    assert report["baseline"] == "batched_3_rows" and set(report["modes"]) == {"fake", "batched_3_rows"}
    assert all(m["same_labels_as_baseline"] for m in report["modes"].values())
    with pytest.raises(ConfigError, match="unknown comparison modes"):
        compare_no_cache(target, drafter, [EOS], problems, settings, modes=["vllm"])
