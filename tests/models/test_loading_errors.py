"""Model-loading errors read as one sentence each."""

from __future__ import annotations

import pytest

from autojudge_eval.errors import ModelLoadError
from autojudge_eval.models import loading


@pytest.mark.parametrize(
    "hub_message", ["We couldn't connect to 'https://huggingface.co'.", "Offline mode..."]
)
def test_hub_error_has_one_full_stop(monkeypatch, hub_message):
    import transformers

    def unreachable(*args, **kwargs):
        raise OSError(hub_message + "\nCheck your connection")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", unreachable)
    with pytest.raises(ModelLoadError) as caught:
        loading._from_pretrained("org/missing", None, None, "cpu")
    text = str(caught.value)
    assert ".." not in text and "could not load model 'org/missing': " in text and "Check your" not in text
