"""autojudge-eval: AutoJudge lossy speculative decoding, measured inside lm-evaluation-harness.

Importing the package imports nothing else: no lm-eval, no torch. ``docs/architecture.md`` maps the
subpackages; ``autojudge_eval.harness.backend`` is the lm-eval backend (``--model autojudge``).
"""

__version__ = "0.1.0"
