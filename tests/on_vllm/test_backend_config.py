"""What ``--model autojudge-vllm`` hands vLLM for each method (no vLLM needed)."""

from __future__ import annotations

import pytest

from autojudge_eval.errors import ConfigError
from autojudge_eval.vllm import backend


def test_every_engine_gets_the_plugins_section_so_the_environment_cannot_add_a_judge(monkeypatch):
    monkeypatch.setenv("AUTOJUDGE_VLLM_JUDGE", "accept-all")
    assert backend.configure("lossless", None, None) == ("lossless", None)
    assert backend.engine_config(None, None, None) == {"autojudge": {"judge": None, "threshold": None}}
    assert backend.configure("autojudge", "reject-all", 0.4) == ("autojudge", "reject-all")
    assert backend.engine_config("reject-all", 0.4, {"other": 1}) == {
        "other": 1,
        "autojudge": {"judge": "reject-all", "threshold": 0.4},
    }


def test_method_arguments_that_do_not_fit_are_refused():
    with pytest.raises(ConfigError, match="needs judge"):
        backend.configure("autojudge", None, None)
    with pytest.raises(ConfigError, match="DD-DT"):
        backend.configure("autojudge", "gsm8k", None)
    with pytest.raises(ConfigError, match="expected a dict"):
        backend.engine_config(None, None, "x")
