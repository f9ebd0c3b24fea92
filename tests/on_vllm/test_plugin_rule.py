"""The plugin's judge-gated walk over vLLM's verification rows, on hand-built batches (no vLLM needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from autojudge_eval.vllm import plugin

VOCAB = 10


def _batch(windows: list[tuple[list[int], list[int], int]]):
    """Per request (drafts, the target's argmax for each draft position, the bonus token): vLLM's metadata,
    logits rows laid out as vLLM lays them ([pending, d_1 .. d_K] per request) and hidden rows (row r = r)."""
    rows, targets, bonuses, drafts = [], [], [], []
    for draft, argmax, bonus in windows:
        for token in argmax:
            targets.append(len(rows))
            rows.append(token)
        bonuses.append(len(rows))
        rows.append(bonus)
        drafts += draft
    logits = torch.full((len(rows), VOCAB), -1.0)
    logits[torch.arange(len(rows)), torch.tensor(rows)] = 1.0
    hidden = torch.arange(len(rows), dtype=torch.float32).unsqueeze(1)  # one feature: the row's index
    metadata = SimpleNamespace(
        num_draft_tokens=[len(d) for d, _, _ in windows],
        target_logits_indices=torch.tensor(targets),
        bonus_logits_indices=torch.tensor(bonuses),
        draft_token_ids=torch.tensor(drafts, dtype=torch.int32),
    )
    sampling = SimpleNamespace(all_greedy=True, temperature=None, max_num_logprobs=None, no_penalties=True)
    width = max(len(d) for d, _, _ in windows) + 1
    return metadata, logits, hidden, sampling, torch.full((len(windows), width), -1, dtype=torch.int32)


WINDOWS = [
    ([1, 2, 3], [1, 5, 3], 7),  # mismatch at position 1
    ([4, 4], [4, 4], 8),  # all match: the bonus token follows
    ([6, 1, 2], [9, 9, 2], 3),  # mismatch at positions 0 and 1
]


def _rule(spec: str) -> plugin.JudgeRule:
    return plugin.JudgeRule(spec, None)


def test_reject_all_is_vllms_greedy_verification():
    out = plugin.judge_windows(_rule("reject-all"), *_batch(WINDOWS))
    assert out.tolist() == [[1, 5, -1, -1], [4, 4, 8, -1], [9, -1, -1, -1]]


def test_accept_all_keeps_every_proposed_token_and_adds_the_bonus():
    out = plugin.judge_windows(_rule("accept-all"), *_batch(WINDOWS))
    assert out.tolist() == [[1, 2, 3, 7], [4, 4, 8, -1], [6, 1, 2, 3]]


class _RowJudge:
    """Calls a mismatch unimportant when the hidden state's row index is in ``rows``: checks which state is read."""

    def __init__(self, rows: set[int]) -> None:
        self.rows, self.seen = rows, []

    def unimportant(self, hidden):
        self.seen += hidden[:, 0].int().tolist()
        return torch.tensor([int(r) in self.rows for r in hidden[:, 0]], dtype=torch.bool)


def test_the_judge_reads_the_state_after_the_draft_token():
    """Request 0's rows are 0..3: its mismatching draft at position 1 was read at row 2 (after pending, d_1)."""
    judge = _RowJudge({2})
    out = plugin.judge_windows(judge, *_batch(WINDOWS))
    assert out.tolist()[0] == [1, 2, 3, 7]  # accepted at row 2, the rest matched, the bonus follows
    assert out.tolist()[2] == [9, -1, -1, -1]  # request 2: its mismatch at row 8 (after d_1) is important
    assert sorted(judge.seen) == [2, 8, 9]  # every mismatch's state, and only those


def test_non_greedy_requests_keep_vllms_output_and_unsupported_settings_fail():
    metadata, logits, hidden, sampling, sampled = _batch(WINDOWS)
    sampling = SimpleNamespace(all_greedy=False, temperature=torch.tensor([0.0, 1.0, 0.0]), max_num_logprobs=None,
                               no_penalties=True)  # fmt: skip
    sampled[1] = torch.tensor([4, 2, 0, -1], dtype=torch.int32)  # what vLLM sampled for request 1
    out = plugin.judge_windows(_rule("accept-all"), metadata, logits, hidden, sampling, sampled)
    assert out.tolist()[1] == [4, 2, 0, -1]
    with pytest.raises(RuntimeError, match="logprobs"):
        plugin.judge_windows(_rule("accept-all"), metadata, logits, hidden,
                             SimpleNamespace(all_greedy=True, max_num_logprobs=1, no_penalties=True), sampled)  # fmt: skip


def test_a_version_it_was_not_written_for_is_refused():
    plugin.check_version("0.32.0")
    with pytest.raises(RuntimeError, match="written for vLLM 0.32"):
        plugin.check_version("0.34.0")


def test_a_dd_judge_is_refused_with_what_to_do(tmp_path):
    from autojudge_eval.judging.artifact import Judge

    Judge(
        torch.zeros(4),
        torch.ones(4),
        torch.zeros(4),
        torch.zeros(1),
        card={"features": "DD-DT", "draft_hidden_size": 2, "target_hidden_size": 2},
    ).save(tmp_path)
    from autojudge_eval.errors import JudgeArtifactError

    with pytest.raises(JudgeArtifactError, match="DT features"):
        plugin.JudgeRule(str(tmp_path), None)


def test_a_dt_judge_gates_by_its_threshold(tmp_path):
    from autojudge_eval.judging.artifact import Judge

    # P(important) = sigmoid(x): row 0 -> 0.5, row 3 -> 0.95
    Judge(torch.zeros(1), torch.ones(1), torch.ones(1), torch.zeros(1),
          card={"features": "DT", "threshold": 0.6, "target_hidden_size": 1}).save(tmp_path)  # fmt: skip
    rule = plugin.JudgeRule(str(tmp_path), None)
    assert rule.threshold == 0.6
    assert rule.unimportant(torch.tensor([[0.0], [3.0]])).tolist() == [True, False]
    assert plugin.JudgeRule(str(tmp_path), "0.4").unimportant(torch.tensor([[0.0]])).tolist() == [False]


def test_an_engines_section_decides_over_the_environment(monkeypatch):
    monkeypatch.setenv(plugin.JUDGE_ENV, "accept-all")
    monkeypatch.setenv(plugin.THRESHOLD_ENV, "0.3")
    assert plugin.judge_config({}) == ("accept-all", "0.3")  # no section: the environment
    assert plugin.judge_config(None) == ("accept-all", "0.3")
    assert plugin.judge_config({"autojudge": {"judge": None, "threshold": None}}) == (None, None)
    assert plugin.judge_config({"autojudge": {"judge": "reject-all", "threshold": 0.7}}) == (
        "reject-all",
        0.7,
    )
    monkeypatch.delenv(plugin.JUDGE_ENV)
    assert plugin.engine_rule(SimpleNamespace(additional_config={})) is None
    assert (
        plugin.engine_rule(
            SimpleNamespace(additional_config={"autojudge": {"judge": "accept-all"}})
        ).threshold
        == 0.5
    )


def test_a_malformed_section_is_refused():
    from autojudge_eval.errors import ConfigError

    with pytest.raises(ConfigError, match="expected"):
        plugin.judge_config({"autojudge": {"judge": "accept-all", "threshhold": 0.5}})


def test_register_on_another_version_installs_nothing_or_raises_when_a_judge_is_set(monkeypatch, caplog):
    monkeypatch.setitem(__import__("sys").modules, "vllm", SimpleNamespace(__version__="0.34.0"))
    monkeypatch.setattr(plugin, "_installed", {})
    monkeypatch.delenv(plugin.JUDGE_ENV, raising=False)
    plugin.register()
    assert plugin._installed == {} and "not one the plugin was written for" in caplog.text
    monkeypatch.setenv(plugin.JUDGE_ENV, "accept-all")
    with pytest.raises(RuntimeError, match="written for vLLM 0.32"):
        plugin.register()
