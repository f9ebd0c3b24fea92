"""autojudge-eval: AutoJudge lossy speculative decoding, measured inside lm-evaluation-harness."""

__version__ = "0.1.0"

from . import lm_backend  # noqa: E402,F401  registers the "autojudge" model with lm-eval; nothing else
