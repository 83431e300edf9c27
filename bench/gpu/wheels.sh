#!/usr/bin/env bash
# bench/gpu/wheels.sh: fill .whl/ with what bench/gpu/check.py needs on the GPU machine and that machine lacks.
#
# The GPU machine (Python 3.12, torch 2.11 + CUDA 13, transformers, peft, accelerate 1.15, pyarrow, pandas,
# fsspec, xxhash) cannot reach any registry, so the missing packages travel as cp312 manylinux wheels in
# `.whl/` (ignored by git, named in the device call's `carry`). The two data files of the check travel in
# `.whl/data/` for the same reason: ../shared/data does not go along. Run from the repository root:
#
#     bench/gpu/wheels.sh            # downloads into .whl/ (about 50 MiB), prints the sizes
#
# manylinux_2_24 is added to the device README's platforms: bitsandbytes 0.50.2 is tagged only with it.
# Pins: the versions the CPU suite runs with (bitsandbytes, pydantic, datasets) and the `bench` extra (trl).
# One version of each package only: two stop the whole `pip install --no-deps` there.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
DATA=${DATA:-../shared/data}
WHEELS=(
  bitsandbytes==0.50.2                                    # QLoRA's 4-bit NF4 (43 MB: most of the total)
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing-extensions==4.16.0                             # the config (pydantic wants typing-extensions>=4.16)
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19       # data loading (xxhash, fsspec, pyarrow are there)
  trl==1.16.0                                             # the peer: SFTTrainer + PEFT
)
mkdir -p .whl/data
for spec in "${WHEELS[@]}"; do
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "$spec"
done
install -m 644 "$DATA/banking77/train.parquet" .whl/data/banking77.parquet
install -m 644 "$DATA/commonsense_qa/train.jsonl" .whl/data/commonsense_qa.jsonl
ls -l .whl .whl/data
du -sh .whl
total=$(du -sm .whl | cut -f1)
if [ "$total" -gt 60 ]; then echo "error: .whl is ${total} MiB, over the 60 MiB planned for it" >&2; exit 1; fi
