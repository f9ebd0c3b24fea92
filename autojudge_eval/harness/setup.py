"""Set-up for the lm-eval backend, away from its request loop: model_args checks, the decode settings and
judge rule of each method, lm-eval's batch size, torch.distributed, and exact loglikelihood scoring."""

from __future__ import annotations

import dataclasses
import os

from autojudge_eval.config import JudgeSpec, parse_judge_spec
from autojudge_eval.errors import ConfigError
from autojudge_eval.provenance import local_rank

AUTO = "auto"
KNOWN_ARGS = (
    "target pretrained draft judge threshold window mode topk dtype draft_dtype device threads max_length "
    "max_gen_toks interleave interleave_dir replay"
)
GREEDY_HELP = "until, max_gen_toks, do_sample=False, temperature=0, num_beams=1 (top_p/top_k have no effect)"
GREEDY_GEN_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature", "num_beams", "top_p", "top_k"}
IGNORED_ARGS = ("trust_remote_code",)  # lm-eval's, meaningless here: nothing runs code from the hub


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


def decoding_for(settings, mode: str | None, judge, threshold_given: bool, pair):
    """(DecodeConfig with the final mode and threshold, the judge's rule or None), once the pair is loaded.

    ``judging.artifact`` is a ``judging.artifact.ResolvedJudge`` or None. Without ``mode=``: autojudge with a judge,
    else lossless with a draft, else target."""
    from autojudge_eval.engine.acceptance import JudgeAccept

    mode = mode or ("autojudge" if judge else "lossless" if pair.drafter is not None else "target")
    if mode != "target" and pair.drafter is None:
        raise ConfigError(f"mode={mode} needs a draft model: pass draft=PATH, or use mode=target")
    if judge is None:
        return dataclasses.replace(settings, mode=mode), None
    if not threshold_given and judge.threshold is not None:
        settings = dataclasses.replace(settings, threshold=judge.threshold)
    decode = dataclasses.replace(settings, mode=mode)
    return decode, JudgeAccept(judge.fn, decode.threshold, judge.features)


def target_alias(target: str, pretrained: str | None) -> str:
    """``pretrained=`` (the name lm-eval's hf backend uses, and the one it names sample folders after) is an
    alias of ``target=``."""
    if pretrained is None:
        return target
    if target not in ("default", pretrained):
        raise ConfigError(f"pretrained={pretrained} and target={target} disagree; pass one of the two")
    return str(pretrained)


def interleaved_point(settings, name: str, judge: str | None, pair):
    """(DecodeConfig, rule) of one interleaved method, e.g. ``topk-4`` or ``autojudge-t0.3``."""
    from autojudge_eval.harness.interleave import parse_method

    method = parse_method(name)
    given = {k: v for k in ("topk", "threshold") if (v := method[k]) is not None}
    base = dataclasses.replace(settings, **given)
    return decoding_for(
        base, method["mode"], judge if method["mode"] == "autojudge" else None, "threshold" in given, pair
    )


def check_args(judge, mode: str | None, others: dict, *, judged_points: bool = False) -> JudgeSpec | None:
    """Fail on unknown keys and judge settings that cannot work, before any model loads; return the judge."""
    unknown = sorted(set(others) - set(IGNORED_ARGS))
    if unknown:
        raise ConfigError(
            f"unknown model_args {', '.join(unknown)}; the autojudge backend takes: {KNOWN_ARGS}"
        )
    spec = parse_judge_spec(judge)
    if spec and mode not in (None, "autojudge") and not judged_points:
        raise ConfigError(f"judge= applies to mode=autojudge only, not mode={mode}; drop one of the two")
    if mode == "autojudge" and not spec:
        raise ConfigError(
            "mode=autojudge needs judge=PATH or judge=gsm8k / judge=livecodebench (the shipped judges), "
            "or the stand-ins judge=accept-all / judge=reject-all"
        )
    from autojudge_eval.judging.artifact import check_judge_files

    check_judge_files(spec)  # a damaged judge file is refused before the model loads
    return spec


def batch_size_from(batch_size, max_batch_size) -> int:
    """lm-eval's --batch_size: a number, or "auto"/"auto:N" (then --max_batch_size, default 16)."""
    text = str(batch_size)
    if text.isdigit() and int(text) > 0:
        return int(text)
    if text.startswith("auto"):
        return int(max_batch_size or 16)
    raise ConfigError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")


def distributed_setup(device: str) -> tuple[int, int, str]:
    """(rank, world size, device) under torchrun / accelerate launch (WORLD_SIZE > 1), else (0, 1, device)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, device
    import torch
    import torch.distributed as dist

    from autojudge_eval.config import resolve_device

    device = resolve_device(device)
    if device.startswith("cuda"):
        device = f"cuda:{local_rank()}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def all_gather_tensors(tensor, world_size: int):
    import torch
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)


def gather_objects(obj, rank: int, world_size: int, dst: int):
    import torch.distributed as dist

    parts = [None] * world_size if rank == dst else None
    dist.gather_object(obj, parts, dst=dst)
    return parts
