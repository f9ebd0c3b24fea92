"""Judge-gated greedy verification inside vLLM's own speculative decoding (the AutoJudge rule on vLLM).

vLLM verifies K proposed tokens per request with one target forward and, for greedy requests, keeps the
longest prefix equal to the target's argmax (``RejectionSampler``). This plugin changes one thing: at a
mismatch, the judge reads the target's hidden state after the draft token (the DT features of the
AutoJudge paper's vLLM integration; the LM head's input, the same state ``engine.features`` uses) and the
draft token is kept when P(important) < threshold. Everything else (scheduling, KV cache, batching,
prefix caching, the proposers) stays vLLM's.

Where it runs: vLLM 0.32 (V1) starts the model in its own processes. On CPU the front end (the process
that builds ``LLM``) spawns an engine-core process, which spawns a worker (``VllmWorker-0``) that holds
the model runner and the rejection sampler. vLLM calls :func:`register` in each of them (its
``vllm.general_plugins`` entry point), and register installs the wrappers unconditionally, whatever the
configuration at that moment. The judge is looked up later, per engine, when vLLM builds that engine's
``RejectionSampler`` (:func:`judge_config`):

* the engine's ``additional_config["autojudge"]`` = ``{"judge": ..., "threshold": ...}``
  (``LLM(additional_config=...)``, ``vllm serve --additional-config '{"autojudge": {...}}'``); when the
  section is present it decides, and ``{"judge": null}`` means no judge;
* otherwise the environment: ``AUTOJUDGE_VLLM_JUDGE`` and ``AUTOJUDGE_VLLM_THRESHOLD``.

A judge is ``accept-all`` | ``reject-all`` | a judge folder (``judge.safetensors`` + ``judge.json`` with DT
features); the threshold defaults to the card's, else 0.5. An engine without a judge runs vLLM's own
code: each wrapper then calls the original and returns its result untouched.

The wrappers:

* ``RejectionSampler.__init__`` resolves the engine's judge and keeps it on the sampler.
* ``LogitsProcessor.forward`` remembers the hidden states it turned into logits, and the logits (one row
  per sampled position, aligned with the logits the sampler receives), while some engine has a judge.
* ``RejectionSampler.forward`` runs vLLM's own sampler, then, for the greedy requests of the batch, walks each
  window again with the judge: per request the rows are ``[pending, d_1 .. d_K]``, so the target's token for
  ``d_j`` is the argmax of row ``target_logits_indices[j]`` and the state after reading ``d_j`` is the next row.
  It refuses logits that did not come from the last ``LogitsProcessor`` call, except in vLLM's start-up
  warm-up (``GPUModelRunner._dummy_sampler_run``, random logits), which keeps vLLM's output.

Written for vLLM 0.32. On another version register installs nothing and logs a warning, or raises if
``AUTOJUDGE_VLLM_JUDGE`` is set; a judge given in ``additional_config`` is refused by the
``--model autojudge-vllm`` backend (:func:`check_version`). An engine on vLLM's V2 model runner (the GPU
default where Triton is present), which has its own rejection sampler, is refused when it has a judge.
"""

from __future__ import annotations

import logging
import os

from autojudge_eval.config import CONSTANT_JUDGES
from autojudge_eval.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_KEY = "autojudge"  # the section of vLLM's additional_config
PLUGIN_NAME = "autojudge"  # the entry point's name (pyproject.toml), as VLLM_PLUGINS lists it
JUDGE_ENV = "AUTOJUDGE_VLLM_JUDGE"
THRESHOLD_ENV = "AUTOJUDGE_VLLM_THRESHOLD"
STATS_ENV = "AUTOJUDGE_VLLM_STATS"  # a file the worker process appends per-step judge counts to (optional)
SUPPORTED_VERSIONS = ("0.32.",)

_installed: dict = {}  # this process's original vLLM methods, once the wrappers are in
# The last LogitsProcessor call (only while an engine of this process has a judge) and the warm-up flag.
_last: dict = {"capture": False, "hidden": None, "logits": None, "warmup": False}


class JudgeRule:
    """P(important) of a batch of (n, H) target hidden states, and the threshold that gates acceptance."""

    def __init__(self, spec: str, threshold: str | float | None) -> None:
        self.spec = spec
        self.constant = CONSTANT_JUDGES.get(spec)
        self.judge = None
        card_threshold = None
        if self.constant is None:
            from autojudge_eval.judging.artifact import load_judge

            self.judge = load_judge(spec)  # safetensors + card; no pickle
            if self.judge.features != "DT":
                from autojudge_eval.errors import JudgeArtifactError

                raise JudgeArtifactError(
                    f"{spec}: vLLM verification reads the target's hidden state only (DT features); this judge "
                    f"uses {self.judge.features}. Train one with `autojudge-eval train --features DT`"
                )
            card_threshold = self.judge.threshold
        self.threshold = (
            float(threshold)
            if threshold not in (None, "")
            else (card_threshold if card_threshold is not None else 0.5)
        )

    def unimportant(self, hidden):
        """(n, H) -> (n,) bool: the draft token may stay."""
        import torch

        if self.constant is not None:
            return torch.full((hidden.shape[0],), self.constant < self.threshold, dtype=torch.bool)
        return self.judge.predict_proba(hidden.float().cpu()) < self.threshold


def check_version(version: str) -> None:
    if not version.startswith(SUPPORTED_VERSIONS):
        raise RuntimeError(
            f"autojudge's vLLM plugin was written for vLLM {', '.join(v + 'x' for v in SUPPORTED_VERSIONS)}, "
            f"found {version}: refusing to run (it would silently verify losslessly). Unset {JUDGE_ENV} to run "
            "vLLM without it, or install a supported vLLM"
        )


def judge_config(additional_config) -> tuple[str | None, str | float | None]:
    """One engine's (judge, threshold): its ``additional_config["autojudge"]`` if present, else the environment."""
    section = additional_config.get(CONFIG_KEY) if isinstance(additional_config, dict) else None
    if section is None:
        return os.environ.get(JUDGE_ENV, "").strip() or None, os.environ.get(
            THRESHOLD_ENV, ""
        ).strip() or None
    if not isinstance(section, dict) or not set(section) <= {"judge", "threshold"}:
        raise ConfigError(
            f'additional_config["{CONFIG_KEY}"] = {section!r}: expected {{"judge": ..., "threshold": ...}} '
            "(judge: accept-all, reject-all, a DT judge folder or null; threshold: a number or null)"
        )
    judge = section.get("judge")
    return (str(judge).strip() or None) if judge is not None else None, section.get("threshold")


def engine_rule(vllm_config) -> JudgeRule | None:
    """The judge of the engine whose config this is (None: vLLM's own verification)."""
    judge, threshold = judge_config(getattr(vllm_config, "additional_config", None))
    return JudgeRule(judge, threshold) if judge else None


def register() -> None:
    """The ``vllm.general_plugins`` entry point: install the wrappers (inert for engines without a judge)."""
    if _installed:
        return
    import vllm

    try:
        check_version(vllm.__version__)
    except RuntimeError:
        if os.environ.get(JUDGE_ENV, "").strip():
            raise
        log.warning(
            "autojudge: vLLM %s is not one the plugin was written for; not installed", vllm.__version__
        )
        return
    _install()


def _install() -> None:
    from vllm.config import get_current_vllm_config_or_none
    from vllm.model_executor.layers.logits_processor import LogitsProcessor
    from vllm.v1.sample.rejection_sampler import RejectionSampler

    _installed.update(lp=LogitsProcessor.forward, lp_init=LogitsProcessor.__init__,
                      rs=RejectionSampler.forward, rs_init=RejectionSampler.__init__)  # fmt: skip

    def lp_init(self, *args, **kwargs):
        _installed["lp_init"](self, *args, **kwargs)
        config = get_current_vllm_config_or_none()
        if (
            config is None
            or config.speculative_config is None
            or not judge_config(config.additional_config)[0]
        ):
            return
        if config.use_v2_model_runner:
            raise ConfigError(
                "autojudge: this engine has a judge but runs vLLM's V2 model runner, whose rejection sampler "
                "the plugin does not wrap; set VLLM_USE_V2_MODEL_RUNNER=0"
            )

    def lp_forward(self, lm_head, hidden_states, *args, **kwargs):
        logits = _installed["lp"](self, lm_head, hidden_states, *args, **kwargs)
        if _last["capture"]:
            _last.update(hidden=hidden_states, logits=logits)
        return logits

    def rs_init(self, *args, **kwargs):
        _installed["rs_init"](self, *args, **kwargs)
        config = get_current_vllm_config_or_none()  # set while a worker builds its model runner
        self.autojudge_rule = engine_rule(config)
        if self.autojudge_rule is not None:
            _last["capture"] = True
            _wrap_warmup()
            log.info("autojudge: judge-gated verification on (judge=%s, threshold=%s)",
                     self.autojudge_rule.spec, self.autojudge_rule.threshold)  # fmt: skip

    def rs_forward(self, metadata, draft_probs, logits, sampling_metadata):
        rule = getattr(self, "autojudge_rule", None)
        if rule is None or _last["warmup"]:
            return _installed["rs"](self, metadata, draft_probs, logits, sampling_metadata)
        hidden = _last["hidden"]
        if logits is not _last["logits"] or hidden is None or hidden.shape[0] != logits.shape[0]:
            raise RuntimeError(
                "autojudge vLLM plugin: the logits to verify are not those of the last LogitsProcessor call "
                f"({logits.shape[0]} rows; hidden rows: {None if hidden is None else hidden.shape[0]}); this vLLM "
                "computes logits in a way the plugin does not know"
            )
        raw = logits.clone()  # vLLM may update logits in place
        out = _installed["rs"](self, metadata, draft_probs, logits, sampling_metadata)
        out.sampled_token_ids = judge_windows(
            rule, metadata, raw, hidden, sampling_metadata, out.sampled_token_ids
        )
        return out

    LogitsProcessor.__init__, LogitsProcessor.forward = lp_init, lp_forward
    RejectionSampler.__init__, RejectionSampler.forward = rs_init, rs_forward


def _wrap_warmup() -> None:
    """Let vLLM's start-up sampler warm-up (random logits, no hidden states) through unjudged."""
    if "warmup" in _installed:
        return
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    _installed["warmup"] = GPUModelRunner._dummy_sampler_run

    def dummy_sampler_run(self, *args, **kwargs):
        _last["warmup"] = True
        try:
            return _installed["warmup"](self, *args, **kwargs)
        finally:
            _last["warmup"] = False

    GPUModelRunner._dummy_sampler_run = dummy_sampler_run


def judge_windows(rule: JudgeRule, metadata, logits, hidden, sampling, sampled):
    """The greedy requests' output tokens ([B, K+1], -1 padded) with mismatches the judge accepts kept."""
    import torch

    if sampling.max_num_logprobs is not None or not sampling.no_penalties:
        raise RuntimeError("autojudge vLLM plugin: logprobs and penalties are not supported with a judge")
    greedy = (
        torch.ones(len(metadata.num_draft_tokens), dtype=torch.bool)
        if sampling.all_greedy
        else (sampling.temperature.cpu() < 1e-5)
    )
    target_rows = metadata.target_logits_indices.cpu().long()
    bonus_rows = metadata.bonus_logits_indices.cpu().long()
    drafts = metadata.draft_token_ids.cpu().long()
    argmax = logits.argmax(dim=-1).cpu()
    mismatch = drafts != argmax[target_rows]
    verdict = torch.zeros_like(mismatch)
    if mismatch.any():  # the state after reading draft j is the row after its target row
        after = target_rows[mismatch] + 1
        verdict[mismatch] = rule.unimportant(hidden[after.to(hidden.device)])
    out = sampled.clone()
    start, taken, met = 0, 0, 0
    for req, k in enumerate(metadata.num_draft_tokens):
        if greedy[req]:
            row = torch.full((out.shape[1],), -1, dtype=out.dtype)
            j, kept = 0, 0
            while j < k and (not mismatch[start + j] or verdict[start + j]):
                row[j] = drafts[start + j]
                kept += int(mismatch[start + j])
                j += 1
            taken += kept
            met += kept + int(j < k)  # mismatches met: those kept, and the rejected one that ends the window
            row[j] = argmax[target_rows[start + j]] if j < k else argmax[bonus_rows[req]]
            out[req] = row.to(out.device)
        start += k
    _record(taken, met)
    return out


def _record(taken: int, mismatches: int) -> None:
    path = os.environ.get(STATS_ENV)
    if path and mismatches:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{taken} {mismatches}\n")
