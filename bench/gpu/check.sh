#!/usr/bin/env bash
# bench/gpu/check.sh: the GPU check of issue 11 as one device call (docs/benchmarks.md, "GPU check").
#
# Here first, once:   bench/gpu/wheels.sh        (fills .whl/: the missing wheels and the two data files)
# Then the call:      command "bash bench/gpu/check.sh", carry [".whl"], timeout_s 560
# A rerun of some sections (at once, while the machine is warm), e.g.:
#                     bash bench/gpu/check.sh --only trl,compile --budget-s 200
#
# Installs .whl/*.whl into /tmp/site (the device README's command), prints the versions the check runs
# under, then runs bench/gpu/check.py with the results in $OUT (gpu_check.json, gpu_check.md,
# gpu_check.log) and the GBs of model folders and launched runs in /tmp/gpu-check, outside $OUT.
# Extra arguments go to bench/gpu/check.py (the last --budget-s given wins).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "error: could not install .whl/*.whl (run bench/gpu/wheels.sh here first)" >&2; exit 1; }
export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
python3 - <<'PY'
import importlib.metadata as m
names = ["torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl", "datasets", "pydantic", "pyarrow",
         "typing_extensions", "fsspec", "huggingface_hub", "safetensors", "tokenizers"]
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "not installed"
print("versions:", ", ".join(f"{n} {version(n)}" for n in names))
PY
python3 -m bench.gpu.check --out "$OUT" --work /tmp/gpu-check --data .whl/data --budget-s 400 "$@" 2>&1 \
  | tee "$OUT/gpu_check.log"
