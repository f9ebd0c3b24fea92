"""AutoJudge on vLLM: judge-gated greedy verification as a vLLM plugin, and its lm-eval backend.

``plugin`` is loaded by vLLM in every process it starts (entry point group ``vllm.general_plugins``) and
is inert for engines without a judge (``additional_config["autojudge"]``, else ``AUTOJUDGE_VLLM_JUDGE``);
``backend`` is lm-eval's ``--model autojudge-vllm``, a thin subclass of lm-eval's own vLLM backend that passes the judge to its engine and records speed.
Importing this package imports neither vLLM nor lm-eval. See docs/vllm.md.
"""
