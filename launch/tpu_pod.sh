#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice (a pod slice: every worker runs one process).
#
#   TPU_NAME=xception-v4-32 ZONE=us-central2-b ACCELERATOR=v4-32 \
#   WORKDIR=/mnt/bucket/runs/xception launch/tpu_pod.sh all --config.batch_size=4096
#
# Subcommands: create (or reuse) the slice · install (copy this checkout and run
# launch/install.sh tpu on every worker: Python 3.12 through uv, the package with
# jax[tpu], and a check that every worker sees its TPU chips) · run (start
# python -m xception_jax.main on all workers, logs streamed here; extra
# arguments go to main) · delete · all (create, install, run).
# Set DRY_RUN=1 to print the gcloud commands instead of running them.
#
# The TPU software version follows the accelerator type (Cloud TPU's table of
# TPU VM images; RUNTIME_VERSION overrides it): v6e -> v2-alpha-tpuv6e,
# v5p -> v2-alpha-tpuv5, v5litepod (v5e) -> v2-alpha-tpuv5-lite, v4 and older ->
# tpu-ubuntu2204-base. Other families are refused: the Cloud TPU API this script
# uses does not support TPU7x and later; use GKE there (launch/gke/jobset.yaml).
# QUEUED=1 asks for the slice through a queued resource (`gcloud compute tpus
# queued-resources`, the way to get spot and large slices), waits until it is
# ACTIVE, and deletes it with `delete`.
#
# WORKDIR must be a path every worker reaches at the same place (a gcsfuse
# mount of a bucket, Filestore or NFS): checkpoints are written by all workers.
# The data set must be prepared there too (--config.data_dir). JAX discovers
# the slice's workers itself on Cloud TPU; preemption notices (SIGTERM on
# spot/preemptible slices) make every worker checkpoint at one step and exit.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
CONFIG="${CONFIG:-configs/imagenet.py}"
REMOTE_DIR="${REMOTE_DIR:-xception_jax}"
SPOT="${SPOT:-}"       # Non-empty: a spot slice (cheaper, preemptible).
QUEUED="${QUEUED:-}"   # Non-empty: through a queued resource named $TPU_NAME.

runtime_version() {
  case "$1" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v4-*|v3-*|v2-*) echo tpu-ubuntu2204-base ;;
    *) echo "error: unknown TPU accelerator type '$1'; this launcher knows v2, v3, v4, v5litepod (v5e), v5p and v6e (e.g. v4-32, v5litepod-16, v6e-8); for TPU7x and later use GKE (launch/gke/jobset.yaml)" >&2
       return 1 ;;
  esac
}
DEFAULT_RUNTIME="$(runtime_version "$ACCELERATOR")" || exit 2
RUNTIME_VERSION="${RUNTIME_VERSION:-$DEFAULT_RUNTIME}"

run() {
  if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

tpu() { run gcloud compute tpus tpu-vm "$@" --zone="$ZONE"; }
queued() { run gcloud compute tpus queued-resources "$@" --zone="$ZONE"; }

create() {
  if [[ -z "${DRY_RUN:-}" ]] && gcloud compute tpus tpu-vm describe "$TPU_NAME" \
      --zone="$ZONE" >/dev/null 2>&1; then
    echo "Reusing TPU slice $TPU_NAME"
    return
  fi
  if [[ -z "$QUEUED" ]]; then
    tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME_VERSION" \
      ${SPOT:+--spot}
    return
  fi
  queued create "$TPU_NAME" --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR" \
    --runtime-version="$RUNTIME_VERSION" ${SPOT:+--spot}
  if [[ -n "${DRY_RUN:-}" ]]; then
    queued describe "$TPU_NAME" --format='value(state.state)'
    return
  fi
  local state
  while state="$(gcloud compute tpus queued-resources describe "$TPU_NAME" --zone="$ZONE" \
                 --format='value(state.state)')"; [[ "$state" != ACTIVE ]]; do
    case "$state" in
      FAILED|SUSPENDED) echo "error: queued resource $TPU_NAME is $state" >&2; exit 1 ;;
    esac
    echo "Queued resource $TPU_NAME: $state; waiting"
    sleep 60
  done
}

install() {
  local repo
  repo="$(cd "$(dirname "$0")/.." && pwd)"
  tpu scp --recurse --worker=all "$repo" "$TPU_NAME:~/$REMOTE_DIR"
  tpu ssh "$TPU_NAME" --worker=all --command="cd ~/$REMOTE_DIR && bash launch/install.sh tpu"
}

train() {
  : "${WORKDIR:?set WORKDIR (a path all workers share)}"
  local args="--config=$CONFIG --workdir=$WORKDIR --config.distributed.enabled=True"
  local extra
  for extra in "$@"; do args+=" $(printf '%q' "$extra")"; done
  tpu ssh "$TPU_NAME" --worker=all \
    --command="cd ~/$REMOTE_DIR && .venv/bin/python -m xception_jax.main $args"
}

delete() {
  if [[ -n "$QUEUED" ]]; then
    queued delete "$TPU_NAME" --force --quiet   # --force: the slice goes with it.
  else
    tpu delete "$TPU_NAME" --quiet
  fi
}

command="${1:-}"
shift || true
case "$command" in
  create) create ;;
  install) install ;;
  run) train "$@" ;;
  delete) delete ;;
  all) create; install; train "$@" ;;
  *) echo "usage: $0 create|install|run|delete|all [main.py arguments]" >&2; exit 2 ;;
esac
