"""Judge-gated greedy verification inside vLLM's own speculative decoding (the AutoJudge rule on vLLM).

vLLM verifies K proposed tokens per request with one target forward and, for greedy requests, keeps the
longest prefix equal to the target's argmax (``RejectionSampler``). This plugin changes one thing: at a
mismatch, the judge reads the target's hidden state after the draft token (the DT features of the
AutoJudge paper's vLLM integration; the LM head's input, the same state ``engine.features`` uses) and the
draft token is kept when P(important) < threshold. Everything else (scheduling, KV cache, batching,
prefix caching, the proposers) stays vLLM's.

How: two wrappers, installed by :func:`register` in every vLLM process when ``AUTOJUDGE_VLLM_JUDGE`` is set.

* ``LogitsProcessor.forward`` remembers the hidden states it turned into logits (one row per sampled
  position, aligned with the logits the sampler receives).
* ``RejectionSampler.forward`` runs vLLM's own sampler, then, for the greedy requests of the batch, walks each
  window again with the judge: per request the rows are ``[pending, d_1 .. d_K]``, so the target's token for
  ``d_j`` is the argmax of row ``target_logits_indices[j]`` and the state after reading ``d_j`` is the next row.

Configuration (environment, so that vLLM's spawned engine processes see it): ``AUTOJUDGE_VLLM_JUDGE`` =
``accept-all`` | ``reject-all`` | a judge folder (``judge.safetensors`` + ``judge.json`` with DT features);
``AUTOJUDGE_VLLM_THRESHOLD`` (default: the card's, else 0.5). Unset: the plugin does nothing, and vLLM's
verification is bit-for-bit its own. Written for vLLM 0.32: on another version, :func:`register` raises.
"""

from __future__ import annotations

import logging
import os
import threading

from autojudge_eval.config import CONSTANT_JUDGES

log = logging.getLogger(__name__)

JUDGE_ENV = "AUTOJUDGE_VLLM_JUDGE"
THRESHOLD_ENV = "AUTOJUDGE_VLLM_THRESHOLD"
STATS_ENV = "AUTOJUDGE_VLLM_STATS"  # a file the engine process appends per-step judge counts to (optional)
SUPPORTED_VERSIONS = ("0.32.",)

_state = threading.local()
_installed: dict = {}


class JudgeRule:
    """P(important) of a batch of (n, H) target hidden states, and the threshold that gates acceptance."""

    def __init__(self, spec: str, threshold: str | None) -> None:
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
            float(threshold) if threshold else (card_threshold if card_threshold is not None else 0.5)
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


def register() -> None:
    """The ``vllm.general_plugins`` entry point: install the wrappers when a judge is configured."""
    spec = os.environ.get(JUDGE_ENV, "").strip()
    if not spec or _installed:
        return
    import vllm
    from vllm.model_executor.layers import logits_processor
    from vllm.v1.sample import rejection_sampler

    check_version(vllm.__version__)
    rule = JudgeRule(spec, os.environ.get(THRESHOLD_ENV))
    cls_lp, cls_rs = logits_processor.LogitsProcessor, rejection_sampler.RejectionSampler
    _installed.update(lp=cls_lp.forward, rs=cls_rs.forward, rule=rule)

    def lp_forward(self, lm_head, hidden_states, *args, **kwargs):
        _state.hidden = hidden_states
        return _installed["lp"](self, lm_head, hidden_states, *args, **kwargs)

    def rs_forward(self, metadata, draft_probs, logits, sampling_metadata):
        raw = logits.clone()  # vLLM may update logits in place
        out = _installed["rs"](self, metadata, draft_probs, logits, sampling_metadata)
        hidden = getattr(_state, "hidden", None)
        if hidden is None or hidden.shape[0] != raw.shape[0]:
            raise RuntimeError(
                f"autojudge vLLM plugin: {0 if hidden is None else hidden.shape[0]} hidden rows for "
                f"{raw.shape[0]} logits rows; this vLLM computes logits in a way the plugin does not know"
            )
        out.sampled_token_ids = judge_windows(
            rule, metadata, raw, hidden, sampling_metadata, out.sampled_token_ids
        )
        return out

    cls_lp.forward, cls_rs.forward = lp_forward, rs_forward
    log.info("autojudge: judge-gated verification on (judge=%s, threshold=%s)", spec, rule.threshold)


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
