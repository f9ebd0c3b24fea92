#!/usr/bin/env bash
# Goal 1 side by side, one run: target-only tokens/s of the HF loop (--model autojudge mode=target) and of
# vLLM (--model autojudge-vllm mode=target, lm-eval's batch = auto) on the same GSM8K slice, one after the
# other, in the tox -e vllm environment. Usage: results/vllm-smoke/goal_throughput.sh LIMIT OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
LIMIT=${1:-8}; OUT=${2:-/tmp/aj-goal}
PY=${PY:-.tox/vllm/bin/python}
export OMP_NUM_THREADS=1 TQDM_DISABLE=1 VLLM_CPU_KVCACHE_SPACE=1 TOKENIZERS_PARALLELISM=false
export AUTOJUDGE_DATA_DIR=${AUTOJUDGE_DATA_DIR:-../shared/data} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
rm -rf "$OUT"; mkdir -p "$OUT"
common=(--include_path tasks --tasks autojudge_gsm8k --apply_chat_template --limit "$LIMIT" --log_samples)
uptime > "$OUT/uptime_before.txt"
"$PY" -m lm_eval --model autojudge --model_args pretrained=default,mode=target,threads=1 \
  "${common[@]}" --output_path "$OUT/hf" > "$OUT/hf.log" 2>&1
"$PY" -m lm_eval --model autojudge-vllm --model_args pretrained=default,mode=target,max_model_len=2048 \
  "${common[@]}" --batch_size auto --output_path "$OUT/vllm" > "$OUT/vllm.log" 2>&1
uptime > "$OUT/uptime_after.txt"
