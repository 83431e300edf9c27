#!/usr/bin/env bash
# Start multitune on one node of a multi-node job (run the same command on every node).
#
#   MACHINE_RANK=0 MAIN_ADDR=10.0.0.1 scripts/launch-multinode.sh configs/multitask-llama3-8b-lora.yaml [key=value ...]
#
# MACHINE_RANK  this node's rank, 0 .. NUM_MACHINES-1 (node 0 hosts the rendezvous)
# MAIN_ADDR     node 0's address, reachable from every node
# MAIN_PORT     a free TCP port on node 0 (default 29500)
# ACCELERATE_CONFIG  the topology (default configs/accelerate/fsdp-3x4.yaml: HSDP, 3 nodes x 4 GPUs)
# Exit status: 75 when the run stopped on SIGTERM after a checkpoint (requeue it: the same command
# resumes); accelerate launch itself would say 1 (src/multitune/launch.py).
set -euo pipefail
: "${MACHINE_RANK:?set MACHINE_RANK to this node's rank (0 on the node at MAIN_ADDR)}"
: "${MAIN_ADDR:?set MAIN_ADDR to the address of the rank-0 node}"
MAIN_PORT="${MAIN_PORT:-29500}"
ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-configs/accelerate/fsdp-3x4.yaml}"
# Time for the processes to checkpoint after a SIGTERM before the launcher kills them (under SLURM's 120 s).
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-100}"
exec python -m multitune.launch accelerate launch --config_file "$ACCELERATE_CONFIG" \
  --machine_rank "$MACHINE_RANK" --main_process_ip "$MAIN_ADDR" --main_process_port "$MAIN_PORT" \
  -m multitune train "$@"
