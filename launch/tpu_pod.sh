#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice (a pod slice: every worker runs one process).
#
#   TPU_NAME=xception-v4-32 ZONE=us-central2-b ACCELERATOR=v4-32 \
#   WORKDIR=/mnt/bucket/runs/xception launch/tpu_pod.sh all --config.batch_size=4096
#
# Subcommands: create (or reuse) the slice · install (copy this checkout and
# `pip install -r requirements.txt jax[tpu]` on every worker) · run (start
# python -m xception_jax.main on all workers, logs streamed here; extra
# arguments go to main) · delete · all (create, install, run).
# Set DRY_RUN=1 to print the gcloud commands instead of running them.
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
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
CONFIG="${CONFIG:-configs/imagenet.py}"
REMOTE_DIR="${REMOTE_DIR:-xception_jax}"
SPOT="${SPOT:-}"   # Non-empty: a spot slice (cheaper, preemptible).

run() {
  if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

tpu() { run gcloud compute tpus tpu-vm "$@" --zone="$ZONE"; }

create() {
  if [[ -z "${DRY_RUN:-}" ]] && gcloud compute tpus tpu-vm describe "$TPU_NAME" \
      --zone="$ZONE" >/dev/null 2>&1; then
    echo "Reusing TPU slice $TPU_NAME"
    return
  fi
  tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME_VERSION" \
    ${SPOT:+--spot}
}

install() {
  local repo
  repo="$(cd "$(dirname "$0")/.." && pwd)"
  tpu scp --recurse --worker=all "$repo" "$TPU_NAME:~/$REMOTE_DIR"
  tpu ssh "$TPU_NAME" --worker=all --command="cd ~/$REMOTE_DIR && python3 -m venv .venv && \
.venv/bin/pip install -q -r requirements.txt 'jax[tpu]' -f \
https://storage.googleapis.com/jax-releases/libtpu_releases.html"
}

train() {
  : "${WORKDIR:?set WORKDIR (a path all workers share)}"
  local args="--config=$CONFIG --workdir=$WORKDIR --config.distributed.enabled=True"
  local extra
  for extra in "$@"; do args+=" $(printf '%q' "$extra")"; done
  tpu ssh "$TPU_NAME" --worker=all \
    --command="cd ~/$REMOTE_DIR && .venv/bin/python -m xception_jax.main $args"
}

delete() { tpu delete "$TPU_NAME" --quiet; }

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
