"""``AutojudgeLM``: lm-eval's ``--model autojudge``, a thin map from lm-eval requests to ``Pair.generate``.

``generate_until`` decodes greedily, one request at a time, in the configured mode (target, lossless, topk,
autojudge) and records each request's speed; ``loglikelihood`` and ``loglikelihood_rolling`` are scored
exactly by the target (speculation does not apply). Speed reaches lm-eval's own outputs two ways: each
generation's record is appended to its request's arguments (``arguments.gen_args_0.arg_2.autojudge`` in the
samples file of ``--log_samples``), and :meth:`AutojudgeLM.get_model_info`, which lm-eval merges into the
results JSON, returns the totals per task (``config.autojudge.speed``). See docs/lm_eval_backend.md.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict

# lm-eval's lazy model table first: get_model() never loads it once anything is registered
import lm_eval.models  # noqa: F401
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
from tqdm import tqdm

from autojudge_eval.harness.interleave import check_interleave_args, method_name, open_replay, request_key
from autojudge_eval.harness.setup import (
    AUTO,
    all_gather_tensors,
    batch_size_from,
    check_args,
    decoding_for,
    distributed_setup,
    gather_objects,
    interleaved_point,
    request_config,
    score_tokens,
    target_alias,
)
from autojudge_eval.harness.speed import SpeedLog, generation_record
from autojudge_eval.judging.artifact import judge_sha256, resolve_judge

log = logging.getLogger(__name__)


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
        threads: int | str | None = None,
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
        target = target_alias(target, pretrained)
        from autojudge_eval.harness import console

        if console.under_lm_eval_cli():
            console.attach_console(self)
        from autojudge_eval.config import DecodeConfig, parse_threads, set_threads
        from autojudge_eval.models.pair import load_pair

        also = check_interleave_args(interleave, interleave_dir, replay)
        judge = check_args(judge, mode, others, judged_points=any(m.startswith("autojudge") for m in also))
        given = dict(mode=mode, window=window, topk=topk, threshold=threshold, max_new_tokens=max_gen_toks)
        # validated before any model loads
        settings = DecodeConfig.build(**{k: v for k, v in given.items() if v is not None})
        parse_threads(threads)  # a bad value fails here, before anything is set or loaded
        # threads=, else $OMP_NUM_THREADS, else config.DEFAULT_THREADS (1: see README "Set up and run")
        self.threads = set_threads(threads)
        self._rank, self._world_size, device = distributed_setup(device or AUTO)
        draft = None if draft == AUTO else "none" if draft in (None, "none") else str(draft)
        self.pair = load_pair(str(target), draft, device=device, dtype=dtype, draft_dtype=draft_dtype)
        self.tokenizer, self.model = self.pair.tokenizer, self.pair.stack.model
        judge = resolve_judge(judge, self.pair) if judge else None  # judge=gsm8k: shipped for this pair
        self.decode, self.rule = decoding_for(settings, mode, judge, threshold is not None, self.pair)
        self.judge_name = judge.name if judge else "none"
        self.replay = open_replay(replay, method_name(self.decode), self.decode.mode) if replay else None
        self.interleaved = None
        if also:
            from autojudge_eval.harness.interleave import OutputStore

            points = {method_name(self.decode): (self.decode, self.rule)}
            points.update({name: interleaved_point(settings, name, judge, self.pair) for name in also})
            self.interleaved = (
                points,
                OutputStore(interleave_dir, list(points), self._rank, self._world_size),
            )
        self._served = 0  # generation requests so far: the interleaved order rotates with it
        self._max_length = int(max_length or getattr(self.model.config, "max_position_embeddings", 0) or 2048)
        self.batch_size = batch_size_from(batch_size, max_batch_size)  # scoring only; generation is 1 by 1
        self.speed = SpeedLog()
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
        from autojudge_eval import __version__

        d, dtype = self.decode, str(self.pair.target.dtype).replace("torch.", "")
        out = {
            "version": __version__, "pair": self.pair.name, "mode": d.mode, "window": d.window,
            "topk": d.topk, "threshold": d.threshold, "judge": self.judge_name, "device": str(self.device),
            "dtype": dtype, "max_length": self.max_length, "world_size": self.world_size,
            "threads": self.threads,
        }  # fmt: skip
        if (digest := judge_sha256(self.judge_name)) is not None:
            out["judge_sha256"] = digest  # of its weights and card
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

        cfg = request_config(decode, gen_kwargs)
        tokens, stats = self.pair.generate(self._prompt_ids(context, cfg.max_new_tokens), cfg, rule)
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for stop in filter(None, cfg.stop):
            text = text.split(stop)[0]
        return text, generation_record(stats, cfg.mode)

    def _interleave(self, context: str, gen_kwargs: dict) -> tuple[str, dict]:
        """Every point decodes the request back to back (order rotating per request), or, on a resumed pass,
        the stored results when every point has one; returns this run's own point's."""
        from autojudge_eval.harness.interleave import rotation

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
        return tensor if self.world_size == 1 else all_gather_tensors(tensor, self.world_size)

    def gather_object(self, obj, dst: int = 0):
        return [obj] if self.world_size == 1 else gather_objects(obj, self.rank, self.world_size, dst)

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
