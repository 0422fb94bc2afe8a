#!/usr/bin/env bash
# The GPU check: the bundled task on CUDA with a short budget, through the real runner.
# Prints val_bpb, steps, tokens per second and peak memory. Under 5 minutes on one H100.
#   bash benchmarks/gpu_check.sh [BUDGET_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
budget="${1:-60}"
make setup >/dev/null
.venv/bin/python - "$budget" <<'PY'
import json, sys
import torch
from engine.experiment.runner import run_experiment
from engine.experiment.task import load_task, template_path

budget = float(sys.argv[1])
print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}, "
      f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}")
task = load_task(template_path())
result = run_experiment(task.files, task.spec, seed=0, budget_s=budget)
metrics = result.metrics
tokens = metrics.get("steps", 0) * 16 * 256  # BATCH_SIZE * SEQ_LEN of the shipped train.py
print(json.dumps({
    "status": result.status,
    "message": result.message,
    "val_bpb": result.objective,
    "steps": metrics.get("steps"),
    "train_tokens_per_s": tokens / budget,
    "inference_tokens_per_s": metrics.get("inference_tokens_per_s"),
    "peak_memory_gb": metrics.get("peak_memory_gb"),
    "train_wall_s": round(result.train_wall_s, 1),
}, indent=2))
PY
