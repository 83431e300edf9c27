#!/usr/bin/env bash
# multitune's container entrypoint.
#
#   train (default)   train the run described by $MULTITUNE_CONFIG into $WORKSPACE/runs/<name>; run again
#                     after a pod restart or preemption and it picks the run up where it stopped
#   serve|chat|merge|push|predict ...   the multitune command of that name
#   anything else     run as given (e.g. bash)
#
# Environment (see .env.example): MULTITUNE_CONFIG (required for train), MULTITUNE_RUN_NAME, HF_TOKEN,
# WANDB_API_KEY, ACCELERATE_CONFIG, NUM_GPUS; on a multi-node cluster NUM_NODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT (RunPod Instant Clusters set these). MULTITUNE_DRY_RUN=1 prints the command instead of running it.
#
# Secrets: HF_TOKEN and WANDB_API_KEY are read by huggingface_hub and wandb from the environment. This
# script only tests whether they are set; it never prints them, and never turns on command tracing.
set -euo pipefail

WORKSPACE=${WORKSPACE:-/workspace}
APP_DIR=${APP_DIR:-/opt/multitune}

say() { echo "[multitune-entrypoint] $*" >&2; }
die() { say "error: $*"; exit 2; }

run() {
  if [[ "${MULTITUNE_DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "$@" | sed 's/ $//'
    echo
    exit 0
  fi
  exec "$@"
}

config_path() {
  local config=${MULTITUNE_CONFIG:-}
  [[ -n "$config" ]] || die "MULTITUNE_CONFIG is not set: give the path of a run config, e.g. /workspace/configs/my-run.yaml"
  for candidate in "$config" "$WORKSPACE/$config" "$APP_DIR/$config"; do
    if [[ -f "$candidate" ]]; then
      readlink -f "$candidate"
      return
    fi
  done
  die "MULTITUNE_CONFIG=$config: no such file (looked as given, under $WORKSPACE and under $APP_DIR)"
}

gpu_count() {
  if [[ -n "${NUM_GPUS:-}" ]]; then echo "$NUM_GPUS"
  elif [[ -n "${NUM_TRAINERS:-}" ]]; then echo "$NUM_TRAINERS"  # RunPod Instant Clusters: GPUs per node
  elif command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L | grep -c '^GPU' || echo 0
  else echo 0
  fi
}

# Asks the run's resolved config (Python, not grep) whether it wants a push at the end.
wants_push() {
  python - "$1" <<'PY'
import sys
from multitune.models.trained import read_run_config
cfg = read_run_config(sys.argv[1])
sys.exit(0 if cfg.hub is not None and cfg.hub.push_at_end else 1)
PY
}

train() {
  local config out nodes gpus
  config=$(config_path)
  out="$WORKSPACE/runs/${MULTITUNE_RUN_NAME:-$(basename "${config%.*}")}"
  mkdir -p "$WORKSPACE/runs"
  [[ -n "${HF_TOKEN:-}" ]] && say "HF_TOKEN is set" || say "HF_TOKEN is not set: gated models and pushes will fail"
  [[ -n "${WANDB_API_KEY:-}" ]] && say "WANDB_API_KEY is set"

  if [[ -f "$out/eval/metrics.json" && -d "$out/adapter" ]]; then
    # Finished before this (re)start: never train again; push if the push never went through.
    say "$out holds a finished run"
    if [[ ! -f "$out/hub_push.json" ]] && wants_push "$out"; then
      say "its push to the Hub did not complete: pushing now"
      run multitune push "$out"
    fi
    exit 0
  fi
  if compgen -G "$out/checkpoints/step-*" >/dev/null; then
    say "checkpoints found in $out/checkpoints: the run resumes from the latest complete one"
  fi

  nodes=${NUM_NODES:-1}
  gpus=$(gpu_count)
  local args=(train "$config" "output_dir=$out" "$@")
  if (( nodes * (gpus > 0 ? gpus : 1) <= 1 )); then
    say "training on one process: $out"
    run multitune "${args[@]}"
  fi
  # Several processes: accelerate starts one per GPU on this node and meets the other nodes at the main
  # node's address. The topology (DDP, FSDP) comes from ACCELERATE_CONFIG; counts and addresses from the
  # environment, which overrides the file.
  if (( nodes > 1 )) && [[ -z "${NCCL_SOCKET_IFNAME:-}" && -e /sys/class/net/ens1 ]]; then
    export NCCL_SOCKET_IFNAME=ens1  # RunPod clusters: the fast inter-node interface; eth0 is the internet
  fi
  # Through multitune.launch: a run stopped by SIGTERM after its checkpoint exits 75 through the launcher
  # too (accelerate launch alone says 1). --multi_gpu only without a config file: given beside one, it
  # makes accelerate ignore the file's distributed_type (an FSDP config would run as DDP).
  local launch=(python -m multitune.launch accelerate launch)
  if [[ -n "${ACCELERATE_CONFIG:-}" ]]; then
    launch+=(--config_file "$ACCELERATE_CONFIG")
  elif (( gpus > 1 || nodes > 1 )); then
    launch+=(--multi_gpu)
  fi
  launch+=(--num_processes "$(( nodes * gpus ))" --num_machines "$nodes")
  if (( nodes > 1 )); then
    : "${MASTER_ADDR:?MASTER_ADDR, the address of the main node, is needed on a multi-node cluster}"
    launch+=(--machine_rank "${NODE_RANK:?NODE_RANK is needed on a multi-node cluster}"
             --main_process_ip "$MASTER_ADDR" --main_process_port "${MASTER_PORT:-29500}")
  fi
  say "training on $nodes node(s) x $gpus GPU(s): $out"
  run "${launch[@]}" -m multitune "${args[@]}"
}

command=${1:-train}
[[ $# -gt 0 ]] && shift
case "$command" in
  train) train "$@" ;;
  serve|chat|merge|push|predict) run multitune "$command" "$@" ;;
  *) run "$command" "$@" ;;
esac
