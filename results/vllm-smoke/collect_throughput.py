"""Gather goal_throughput.sh's two lm-eval runs into one JSON record (stdout)."""

import json
import platform
import sys
from pathlib import Path

out = Path(sys.argv[1])


def load(name):
    results = json.loads(next((out / name).rglob("results_*.json")).read_text())
    samples = [json.loads(x) for x in next((out / name).rglob("samples_*.jsonl")).read_text().splitlines()]
    return results, sorted(samples, key=lambda s: s["doc_id"])


hf, hf_samples = load("hf")
vl, vl_samples = load("vllm")
hf_speed = hf["config"]["autojudge"]["speed"]
vl_speed = vl["config"]["autojudge"].get(
    "calls", vl["config"]["autojudge"]["speed"]
)  # before 2026-12-04: "speed"
hf_tps = hf_speed["all"]["generate_until"]["tokens_per_s"]
vl_new = sum(r["new_tokens"] for r in vl_speed)
vl_wall = sum(r["wall_time_s"] for r in vl_speed)
# one text per document (lm-eval lists each document once per filter)
hf_texts = {s["doc_id"]: s["resps"][0][0] for s in hf_samples}
vl_texts = {s["doc_id"]: s["resps"][0][0] for s in vl_samples}
same = sum(hf_texts[d] == vl_texts.get(d) for d in hf_texts)
record = {
    "schema": "vllm-smoke/throughput/1",
    "command": "results/vllm-smoke/goal_throughput.sh " + " ".join(sys.argv[2:]),
    "machine": f"{platform.machine()} 2-core CPU box, shared; fp32",
    "uptime_before": (out / "uptime_before.txt").read_text().strip(),
    "uptime_after": (out / "uptime_after.txt").read_text().strip(),
    "problems": len(hf_texts),
    "hf_loop_target": {"speed": hf_speed, "results": hf["results"]},
    "vllm_target": {"speed": vl_speed, "results": vl["results"], "tokens_per_s": vl_new / vl_wall},
    "ratio_vllm_over_hf_tokens_per_s": (vl_new / vl_wall) / hf_tps if hf_tps else None,
    "identical_texts": same,  # documents whose generated text is the same on both engines
    "versions": {k: vl.get(k) for k in ("lm_eval_version", "git_hash")},
}
json.dump(record, sys.stdout, indent=1, default=str)
