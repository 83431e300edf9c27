#!/usr/bin/env bash
# The same job with torchrun instead of accelerate launch (run on every node).
#
#   NNODES=3 NODE_RANK=0 MASTER_ADDR=10.0.0.1 GPUS_PER_NODE=4 scripts/torchrun-multinode.sh RUN.yaml [key=value ...]
#
# torchrun gives each process RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; accelerate reads
# them. Without `accelerate launch` the FSDP settings come from these environment variables instead of a
# config file (the same settings as configs/accelerate/fsdp-3x4.yaml). Drop the FSDP_* lines for DDP.
set -euo pipefail
: "${NNODES:?}" "${NODE_RANK:?}" "${MASTER_ADDR:?}"
GPUS_PER_NODE="${GPUS_PER_NODE:-4}"
MASTER_PORT="${MASTER_PORT:-29500}"
export ACCELERATE_USE_FSDP=true FSDP_VERSION=2 FSDP_AUTO_WRAP_POLICY=TRANSFORMER_BASED_WRAP \
  FSDP_TRANSFORMER_CLS_TO_WRAP=LlamaDecoderLayer FSDP_RESHARD_AFTER_FORWARD=true \
  FSDP_STATE_DICT_TYPE=FULL_STATE_DICT FSDP_CPU_RAM_EFFICIENT_LOADING=true
exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" -m multitune train "$@"
