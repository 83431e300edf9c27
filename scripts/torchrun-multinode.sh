#!/usr/bin/env bash
# The multi-node job with torchrun instead of accelerate launch (run on every node).
#
#   NNODES=3 NODE_RANK=0 MASTER_ADDR=10.0.0.1 GPUS_PER_NODE=4 scripts/torchrun-multinode.sh RUN.yaml [key=value ...]
#
# torchrun gives each process RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; accelerate reads
# them. Without `accelerate launch` the sharding settings are the environment variables accelerate's
# config files set (src/multitune/train/shard.py reads them), chosen by LAYOUT:
#   hsdp (default)  shard within a node, replicate across nodes: FSDP2 on a NNODES x GPUS_PER_NODE mesh
#                   (the layout for LoRA, QLoRA and full fine-tuning of models that fit one node)
#   fsdp            shard across every GPU of every node (only for a model that does not fit one node)
#   ddp             a whole copy on every GPU
# Exit status: 75 when the run stopped on SIGTERM after a checkpoint (requeue it: the same command
# resumes), as `multitune train` gives alone; torchrun itself would say 1 (src/multitune/launch.py).
set -euo pipefail
: "${NNODES:?}" "${NODE_RANK:?}" "${MASTER_ADDR:?}"
GPUS_PER_NODE="${GPUS_PER_NODE:-4}"
MASTER_PORT="${MASTER_PORT:-29500}"
LAYOUT="${LAYOUT:-hsdp}"
# FSDP_CPU_RAM_EFFICIENT_LOADING: process 0 alone reads the weights, as in configs/accelerate/fsdp-3x4.yaml.
case "$LAYOUT" in
  hsdp) export ACCELERATE_USE_FSDP=true FSDP_VERSION=2 FSDP_CPU_RAM_EFFICIENT_LOADING=true \
          PARALLELISM_CONFIG_DP_REPLICATE_SIZE="$NNODES" PARALLELISM_CONFIG_DP_SHARD_SIZE="$GPUS_PER_NODE" ;;
  fsdp) export ACCELERATE_USE_FSDP=true FSDP_VERSION=2 FSDP_CPU_RAM_EFFICIENT_LOADING=true ;;
  ddp) ;;
  *) echo "LAYOUT must be hsdp, fsdp or ddp, not $LAYOUT" >&2; exit 2 ;;
esac
# Time for the processes to finish their step and checkpoint after a SIGTERM before torchrun kills them
# (keep it under the scheduler's grace period: SLURM's --signal=TERM@120 gives 120 s).
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-100}"
exec python -m multitune.launch torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" \
  --nproc_per_node "$GPUS_PER_NODE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  -m multitune train "$@"
