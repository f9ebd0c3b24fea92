"""autojudge-eval: AutoJudge lossy speculative decoding, measured inside lm-evaluation-harness."""

__version__ = "0.1.0"
