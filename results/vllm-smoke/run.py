import json, os, sys, time
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
from vllm import LLM, SamplingParams
def main():
    mode, out = sys.argv[1], sys.argv[2]
    path = "/root/.cache/autojudge-eval/gguf/b179c9523d0e6a0f98a330c7562b6827-plain2"
    spec = None if mode == "target" else {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 1}
    llm = LLM(path, dtype="float32", gpu_memory_utilization=0.05, max_model_len=1024, speculative_config=spec, enforce_eager=True, disable_log_stats=False)
    sp = SamplingParams(temperature=0, max_tokens=64)
    prompts = ["Count: 1, 2, 3, 4, 5, 6,", "The capital of France is", "def fib(n):\n    ", "Repeat: apple banana apple banana apple"]
    t = time.time(); outs = llm.generate(prompts, sp); dt = time.time() - t
    metrics = {m.name: getattr(m, "value", None) if hasattr(m, "value") else getattr(m, "values", None) for m in llm.get_metrics()}
    spec_m = {k: v for k, v in metrics.items() if "spec" in k}
    json.dump({"mode": mode, "texts": [list(o.outputs[0].token_ids) for o in outs], "seconds": dt, "spec": spec_m}, open(out, "w"), default=str)
if __name__ == "__main__":
    main()
