"""Greedy tokens/s of vLLM's CPU build through mining's ``VllmGreedy`` at 1, 2 and 16 requests of 96 tokens.

Run in the vLLM env at one thread (docs/vllm.md, "Mining on vLLM"):
``OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 .tox/vllm/bin/python scripts/vllm_greedy_rate.py``
"""

import time

from autojudge_eval.models.pair import load_pair
from autojudge_eval.vllm.mining import VllmGreedy, greedy_engine

QUESTION = (
    "Question: Tom has 3 apples and buys 5 more. Then he gives 2 to Ann. How many apples does he have now? "
    "Answer step by step."
)

if __name__ == "__main__":
    pair = load_pair("default", "ngram")
    service = VllmGreedy(greedy_engine("default", "float32", 600, 16), pair.eos_ids)
    base = pair.tokenizer(QUESTION)["input_ids"]
    for rows in (1, 2, 16):
        for r in range(rows):
            service.submit(f"{rows}-{r}", [*base, r + 10], 96)
        start, tokens, live = time.perf_counter(), 0, rows
        while live:
            for _key, new, finished in service.poll():
                tokens += len(new)
                live -= finished
        seconds = time.perf_counter() - start
        print(f"rows {rows}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tok/s", flush=True)
