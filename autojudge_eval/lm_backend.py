"""``AutojudgeLM``: lm-eval's ``--model autojudge``, a thin map from lm-eval requests to ``Pair.generate``.

``generate_until`` decodes greedily, one request at a time, in the configured mode (target, lossless, topk,
autojudge) and records each request's speed; ``loglikelihood`` and ``loglikelihood_rolling`` are scored
exactly by the target (speculation does not apply). Speed reaches lm-eval's own outputs two ways: each
generation's record is appended to its request's arguments (``arguments.gen_args_0.arg_2.autojudge`` in the
samples file of ``--log_samples``), and :meth:`AutojudgeLM.get_model_info`, which lm-eval merges into the
results JSON, returns the totals per task (``config.autojudge.speed``). See docs/lm_eval_backend.md.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import defaultdict
from pathlib import Path

# lm-eval's lazy model table first: get_model() never loads it once anything is registered
import lm_eval.models  # noqa: F401
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
from tqdm import tqdm

from .errors import ConfigError
from .interleave import check_interleave_args, method_name, open_replay, request_key
from .judge import SHIPPED_TASKS, load_judge, shipped_judge

log = logging.getLogger(__name__)

AUTO = "auto"
CONSTANT_JUDGES = {"accept-all": 0.0, "reject-all": 1.0}  # stand-ins: P(important) fixed at 0 or 1
KNOWN_ARGS = (
    "target pretrained draft judge threshold window mode topk dtype draft_dtype device max_length max_gen_toks "
    "interleave interleave_dir replay"
)
GREEDY_HELP = "until, max_gen_toks, do_sample=False, temperature=0, num_beams=1 (top_p/top_k have no effect)"
GREEDY_GEN_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature", "num_beams", "top_p", "top_k"}
IGNORED_ARGS = ("trust_remote_code",)  # lm-eval's, meaningless here: nothing runs code from the hub


@register_model("autojudge")
class AutojudgeLM(TemplateLM):
    """Speculative/AutoJudge decoding behind lm-eval's ``LM`` interface; keywords = ``--model_args``."""

    def __init__(
        self,
        target: str = "default",
        draft: str | None = AUTO,
        judge: str | None = None,
        threshold: float | None = None,
        window: int = 4,
        mode: str | None = None,
        topk: int = 4,
        dtype: str | None = None,
        draft_dtype: str | None = None,
        device: str | None = None,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        pretrained: str | None = None,
        interleave: str | None = None,
        interleave_dir: str | None = None,
        replay: str | None = None,
        **others,
    ) -> None:
        super().__init__()
        target = _target(target, pretrained)
        from . import lm_cli  # not at the top: `python -m autojudge_eval.lm_cli` must not find it loaded

        if lm_cli.under_lm_eval_cli():
            lm_cli.attach_console(self)
        from .config import DecodeConfig
        from .pair import load_pair

        also = check_interleave_args(interleave, interleave_dir, replay, mode)
        judge = _check_args(judge, mode, others, judged_points=any(m.startswith("autojudge") for m in also))
        given = dict(mode=mode, window=window, topk=topk, threshold=threshold, max_new_tokens=max_gen_toks)
        # validated before any model loads
        settings = DecodeConfig.build(**{k: v for k, v in given.items() if v is not None})
        self._rank, self._world_size, device = _distributed(device or AUTO)
        if also and self._world_size > 1:
            raise ConfigError("interleave= runs in one process; drop it or run without accelerate/torchrun")
        draft = None if draft == AUTO else "none" if draft in (None, "none") else str(draft)
        self.pair = load_pair(str(target), draft, device=device, dtype=dtype, draft_dtype=draft_dtype)
        self.tokenizer, self.model = self.pair.tokenizer, self.pair.stack.model
        if judge in SHIPPED_TASKS:  # judge=gsm8k: the judge shipped in judges/gsm8k/ for this pair
            judge = str(shipped_judge(judge, self.pair.name))
        self.decode, self.rule = _decoding(settings, mode, judge, threshold is not None, self.pair)
        self.judge_name = judge or "none"
        self.replay = open_replay(replay, method_name(self.decode), self.decode.mode) if replay else None
        self.interleaved = None
        if also:
            from .interleave import OutputStore

            points = {method_name(self.decode): (self.decode, self.rule)}
            points.update({name: _point(settings, name, judge, self.pair) for name in also})
            self.interleaved = (points, OutputStore(interleave_dir, list(points)))
        self._served = 0  # generation requests so far: the interleaved order rotates with it
        self._max_length = int(max_length or getattr(self.model.config, "max_position_embeddings", 0) or 2048)
        self.batch_size = _batch_size(batch_size, max_batch_size)  # scoring only; generation is 1 by 1
        self.speed = lm_cli.SpeedLog()
        self._scored = [0, 0]  # loglikelihood: tokens scored, target forwards

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> AutojudgeLM:
        """lm-eval's constructor. ``--model_args`` win over the ``--device``/``--batch_size`` lm-eval adds,
        and its default ``--device cuda:0`` falls back to auto without CUDA, as for ``--model hf``."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        if str(extra.get("device", "")).startswith("cuda") and "device" not in arg_dict:
            import torch

            if not torch.cuda.is_available():
                del extra["device"]
        return cls(**{**extra, **arg_dict})

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> AutojudgeLM:
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    def describe(self) -> dict:
        from . import __version__

        d, dtype = self.decode, str(self.pair.target.dtype).replace("torch.", "")
        out = {
            "version": __version__, "pair": self.pair.name, "mode": d.mode, "window": d.window,
            "topk": d.topk, "threshold": d.threshold, "judge": self.judge_name, "device": str(self.device),
            "dtype": dtype, "max_length": self.max_length, "world_size": self.world_size,
        }  # fmt: skip
        if self.replay is not None:
            out["speed_from"] = f"interleaved pass: {self.replay.path}"
        if self.interleaved is not None:
            points, store = self.interleaved
            out["interleaved_with"] = {"methods": list(points)[1:], "dir": str(store.folder)}
        return out

    def _quiet(self, disable_tqdm: bool) -> bool:
        """No bar on ranks other than 0, when lm-eval asks, or when ``TQDM_DISABLE`` is set (as in CI)."""
        env = os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")
        return bool(disable_tqdm or self.rank != 0 or env)

    def get_model_info(self) -> dict:
        """lm-eval merges this into ``results["config"]``: the settings and the speed totals per task."""
        return {"autojudge": {**self.describe(), "speed": self.speed.summary()}}

    # --- the tokenizer side of lm-eval's interface ----------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.pair.eos_ids[0] if self.tokenizer.eos_token_id is None else self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return self.eot_token_id if bos is None else bos

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self):
        return self.pair.stack.device

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))  # no BOS, as hf

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )  # fmt: skip

    # --- requests ------------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        unique = {id(r): r for r in requests}  # lm-eval repeats an Instance for repeats and rank padding
        attach = self.cache_hook.dbdict is None  # --use_cache keys its database on the arguments: keep them
        first, texts = len(self.speed.records), {}
        for req in tqdm(unique.values(), desc="autojudge generate", disable=self._quiet(disable_tqdm)):
            context, gen_kwargs = req.args[0], req.args[1]
            if self.replay is not None:
                text, record = self.replay.get(request_key(context, gen_kwargs), context)
            elif self.interleaved is not None:
                text, record = self._interleave(context, gen_kwargs)
            else:
                text, record = self._generate(context, gen_kwargs, self.decode, self.rule)
            self._served += 1
            self.speed.add("generate_until", req.task_name, record)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            if attach:
                req.arguments = (*req.arguments, {"autojudge": record})
            texts[id(req)] = text
        self._gather_speed(first)
        return [texts[id(r)] for r in requests]

    def _generate(self, context: str, gen_kwargs: dict, decode, rule) -> tuple[str, dict]:
        """Decode one request with ``decode`` (and the judge's ``rule``): its text and speed record."""
        from .lm_cli import generation_record

        cfg = request_config(decode, gen_kwargs)
        tokens, stats = self.pair.generate(self._prompt_ids(context, cfg.max_new_tokens), cfg, rule)
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for stop in filter(None, cfg.stop):
            text = text.split(stop)[0]
        return text, generation_record(stats, cfg.mode)

    def _interleave(self, context: str, gen_kwargs: dict) -> tuple[str, dict]:
        """Every point decodes the request back to back (order rotating per request), or, on a resumed pass,
        the stored results when every point has one; returns this run's own point's."""
        from .interleave import rotation

        points, store = self.interleaved
        key = request_key(context, gen_kwargs)
        results = store.complete(key)
        if results is None:
            results = {}
            for name in rotation(list(points), self._served):
                results[name] = self._generate(context, gen_kwargs, *points[name])
            store.add(key, {name: results[name] for name in points})
        return results[next(iter(points))]

    def _prompt_ids(self, context: str, max_new: int) -> list[int]:
        ids = self.tok_encode(context) or [self.prefix_token_id]
        room = max(1, self.max_length - max_new)
        if len(ids) > room:
            log.warning(
                "prompt of %d tokens cut to its last %d (max_length %d)", len(ids), room, self.max_length
            )
            ids = ids[-room:]
        return ids

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self._score(
            "loglikelihood", requests, lambda reqs: TemplateLM.loglikelihood(self, reqs, disable_tqdm)
        )

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return self._score("loglikelihood_rolling", requests, self._rolling)

    def _score(self, kind: str, requests, score) -> list:
        """Score each task's unique Instances; record requests, tokens, target forwards and time per task."""
        first, results, by_task = len(self.speed.records), {}, defaultdict(dict)
        for req in requests:
            by_task[req.task_name][id(req)] = req
        for task, reqs in by_task.items():
            start, before = time.perf_counter(), list(self._scored)
            for key, result in zip(reqs, score(list(reqs.values())), strict=True):
                results[key] = result
            tokens, forwards = self._scored[0] - before[0], self._scored[1] - before[1]
            record = {"requests": len(reqs), "tokens_scored": tokens, "target_forwards": forwards}
            self.speed.add(kind, task, {**record, "wall_time_s": time.perf_counter() - start})
        self._gather_speed(first)
        return [results[id(r)] for r in requests]

    def _rolling(self, requests) -> list[float]:
        """Whole-text log-likelihoods over disjoint windows of ``max_length``, as lm-eval's hf backend."""
        windows, owners = [], []
        for i, req in enumerate(requests):
            tokens = self.tok_encode(req.args[0])
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1
            )):  # fmt: skip
                windows.append((None, ctx, cont))
                owners.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows), strict=True):
            totals[i] += logprob
        return totals

    def _loglikelihood_tokens(
        self, requests, disable_tqdm: bool = False, **kwargs
    ) -> list[tuple[float, bool]]:
        """TemplateLM's scoring hook: ``requests`` hold (cache key, context ids, continuation ids)."""
        bar = tqdm(desc="autojudge score", disable=self._quiet(disable_tqdm))
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        out, forwards = score_tokens(self.model, pairs, self.max_length, self.batch_size, bar)
        self._scored[0] += sum(min(len(cont), self.max_length) for cont in (p[1] for p in pairs))
        self._scored[1] += forwards
        for (key, _, _), result in zip(requests, out, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return out

    # --- data parallel (torchrun, accelerate launch): lm-eval gives each rank its share -----------------
    def _gather_speed(self, first: int) -> None:
        """Move this call's speed records from every rank to rank 0 (a collective: every rank calls it)."""
        if self.world_size > 1:
            parts = self.gather_object(self.speed.records[first:])
            self.speed.records[first:] = [r for part in parts for r in part] if self.rank == 0 else []

    def all_gather(self, tensor):
        return tensor if self.world_size == 1 else _all_gather(tensor, self.world_size)

    def gather_object(self, obj, dst: int = 0):
        return [obj] if self.world_size == 1 else _gather_object(obj, self.rank, self.world_size, dst)

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


def request_config(decode, gen_kwargs: dict):
    """The ``DecodeConfig`` of one request: its ``until`` and ``max_gen_toks``. Sampling and settings that
    would change greedy decoding (beams, repetition penalties, ...) are refused, never silently ignored."""
    do_sample, temperature = gen_kwargs.get("do_sample"), gen_kwargs.get("temperature")
    beams = gen_kwargs.get("num_beams", 1)
    if do_sample or (temperature or 0) > 0 or beams != 1:
        raise ConfigError(
            f"sampling and beam search are not supported yet (got do_sample={do_sample}, "
            f"temperature={temperature}, num_beams={beams}): the autojudge backend decodes greedily; "
            "pass --gen_kwargs do_sample=False,temperature=0"
        )
    unknown = sorted(set(gen_kwargs) - GREEDY_GEN_KWARGS)
    if unknown:
        raise ConfigError(
            f"gen_kwargs {', '.join(unknown)} not supported; this backend reads only {GREEDY_HELP}"
        )
    until = gen_kwargs.get("until") or []
    until = (until,) if isinstance(until, str) else tuple(until)
    max_new = int(gen_kwargs.get("max_gen_toks", decode.max_new_tokens))
    return dataclasses.replace(decode, max_new_tokens=max_new, stop=until)


def score_tokens(model, pairs, max_length: int, batch_size: int, bar) -> tuple[list[tuple[float, bool]], int]:
    """Exact (log-probability, is greedy) of each continuation after its context, and the forwards used.

    ``pairs`` holds (context ids, continuation ids). Inputs keep their last ``max_length`` tokens, as in
    lm-eval's hf backend. Inputs of one length share a forward, longest first, so no padding enters any score.
    """
    import torch

    inputs = [(ctx + cont)[-(max_length + 1) :][:-1] for ctx, cont in pairs]
    batches: list[list[int]] = []
    for i in sorted(range(len(pairs)), key=lambda i: -len(inputs[i])):
        if batches and len(inputs[batches[-1][0]]) == len(inputs[i]) and len(batches[-1]) < batch_size:
            batches[-1].append(i)
        else:
            batches.append([i])
    bar.reset(total=len(batches))
    out: list = [None] * len(pairs)
    device = next(model.parameters()).device
    for batch in batches:
        ids = torch.tensor([inputs[i] for i in batch], dtype=torch.long, device=device)
        with torch.inference_mode():
            logprobs = model(input_ids=ids, use_cache=False).logits.float().log_softmax(-1)  # (B, L, V)
        for row, i in enumerate(batch):
            cont = torch.tensor(pairs[i][1][-ids.shape[1] :], dtype=torch.long, device=device)
            picked = logprobs[row, ids.shape[1] - len(cont) :]  # (C, V): the positions that predict cont
            out[i] = (float(picked.gather(-1, cont[:, None]).sum()), bool((picked.argmax(-1) == cont).all()))
        bar.update()
    bar.close()
    return out, len(batches)


def _decoding(settings, mode: str | None, judge: str | None, threshold_given: bool, pair):
    """(DecodeConfig with the final mode and threshold, the judge's rule or None), once the pair is loaded.

    Without ``mode=``: autojudge with a judge, else lossless with a draft, else target."""
    from .acceptance import JudgeAccept, constant_judge

    mode = mode or ("autojudge" if judge else "lossless" if pair.drafter is not None else "target")
    if mode != "target" and pair.drafter is None:
        raise ConfigError(f"mode={mode} needs a draft model: pass draft=PATH, or use mode=target")
    if judge is None:
        return dataclasses.replace(settings, mode=mode), None
    if judge in CONSTANT_JUDGES:
        fn, features, own_threshold = constant_judge(CONSTANT_JUDGES[judge]), "DT", None
    else:
        fn = load_judge(judge, pair)
        features, own_threshold = fn.features, fn.threshold
    if not threshold_given and own_threshold is not None:
        settings = dataclasses.replace(settings, threshold=own_threshold)
    decode = dataclasses.replace(settings, mode=mode)
    return decode, JudgeAccept(fn, decode.threshold, features)


def _target(target: str, pretrained: str | None) -> str:
    """``pretrained=`` (the name lm-eval's hf backend uses, and the one it names sample folders after) is an
    alias of ``target=``."""
    if pretrained is None:
        return target
    if target not in ("default", pretrained):
        raise ConfigError(f"pretrained={pretrained} and target={target} disagree; pass one of the two")
    return str(pretrained)


def _point(settings, name: str, judge: str | None, pair):
    """(DecodeConfig, rule) of one interleaved method, e.g. ``topk-4`` or ``autojudge-t0.3``."""
    from .interleave import parse_method

    method = parse_method(name)
    given = {k: v for k in ("topk", "threshold") if (v := method[k]) is not None}
    base = dataclasses.replace(settings, **given)
    return _decoding(
        base, method["mode"], judge if method["mode"] == "autojudge" else None, "threshold" in given, pair
    )


def _check_args(judge, mode: str | None, others: dict, *, judged_points: bool = False) -> str | None:
    """Fail on unknown keys and judge settings that cannot work, before any model loads; return the judge."""
    unknown = sorted(set(others) - set(IGNORED_ARGS))
    if unknown:
        raise ConfigError(
            f"unknown model_args {', '.join(unknown)}; the autojudge backend takes: {KNOWN_ARGS}"
        )
    judge = None if judge in (None, "none") else str(judge)
    if judge and mode not in (None, "autojudge") and not judged_points:
        raise ConfigError(f"judge= applies to mode=autojudge only, not mode={mode}; drop one of the two")
    if mode == "autojudge" and not judge:
        raise ConfigError(
            "mode=autojudge needs judge=PATH or judge=gsm8k / judge=livecodebench (the shipped judges), "
            "or the stand-ins judge=accept-all / judge=reject-all"
        )
    if judge and judge not in (*CONSTANT_JUDGES, *SHIPPED_TASKS) and not Path(judge).exists():
        raise ConfigError(
            f"judge file not found: {judge}; pass a judge folder (or its .safetensors file) from "
            f"`autojudge-eval train`, a benchmark with a shipped judge ({', '.join(SHIPPED_TASKS)}), "
            "or judge=accept-all / judge=reject-all (constant stand-ins)"
        )
    return judge


def _batch_size(batch_size, max_batch_size) -> int:
    """lm-eval's --batch_size: a number, or "auto"/"auto:N" (then --max_batch_size, default 16)."""
    text = str(batch_size)
    if text.isdigit() and int(text) > 0:
        return int(text)
    if text.startswith("auto"):
        return int(max_batch_size or 16)
    raise ConfigError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")


def _distributed(device: str) -> tuple[int, int, str]:
    """(rank, world size, device) under torchrun / accelerate launch (WORLD_SIZE > 1), else (0, 1, device)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, device
    import torch
    import torch.distributed as dist

    from .config import resolve_device

    device = resolve_device(device)
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _all_gather(tensor, world_size: int):
    import torch
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)


def _gather_object(obj, rank: int, world_size: int, dst: int):
    import torch.distributed as dist

    parts = [None] * world_size if rank == dst else None
    dist.gather_object(obj, parts, dst=dst)
    return parts
