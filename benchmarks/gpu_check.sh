#!/usr/bin/env bash
# Issue 6's GPU measurements as one prepared command, for a session lent a GPU
# machine (device tool: run `bash benchmarks/gpu_check.sh`, timeout_s=600).
#
# It uses the machine's own python3 (JAX with CUDA, flax, optax, torch, timm;
# nothing is installed) and, in about 7 minutes:
#   1. measures the device's two roofline ceilings (benchmarks/device_ceilings.py);
#   2. times the fused depthwise + pointwise Pallas kernel against XLA's two
#      convs on Xception's shapes, two block sizes (benchmarks/pallas_separable.py);
#   3. measures bfloat16 Xception training and inference at batch 128, ours
#      ('auto': XLA's forms on a GPU) next to timm with AMP in channels-last
#      and NCHW, with XLA's cost analysis and the roofline against the
#      measured ceilings; then profiles our training step per operation with
#      XLA's CUDA graphs off, so that every kernel is named (gpu_check_trace.tgz);
#   4. compiles the form pair that aborted XLA's GPU compiler on 2026-11-27
#      ('shifted' depthwise with 'dot' pointwise) and 'dot' alone, with XLA's
#      log on, to name the failing check;
#   5. runs the tests the first GPU run did not reach: the fused batch norm
#      against flax's (float32 at highest matmul precision) and the Pallas
#      kernel's (2026-11-27: the other form tests of tests/test_ops.py passed).
# The log, the RESULTS.md sections it appended and the profiles land in $OUT
# (default ./gpu_check_out); copy the sections into benchmarks/RESULTS.md. Each
# step has its own time limit, 540 s in all, so the command ends inside the call's.
# CPU smoke run: BATCH=2 IMAGE_SIZE=71 SMALL=1 PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
set -uo pipefail
out=${OUT:-gpu_check_out}
mkdir -p "$out"
python=${PYTHON:-python3}
batch=${BATCH:-128}
size=${IMAGE_SIZE:-299}
small=${SMALL:+--matmul=256 --copy-mib=16}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1
results=benchmarks/RESULTS.md
lines_before=$(wc -l < "$results")
trace=$(mktemp -d)
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$python" -c 'import jax, flax, optax, torch, timm; print("jax", jax.__version__,
      jax.devices(), "flax", flax.__version__, "optax", optax.__version__, "torch",
      torch.__version__, "timm", timm.__version__)'
  peaks=$(timeout 40 "$python" -m benchmarks.device_ceilings $small | tee /dev/stderr | tail -1)
  [[ $peaks == --peak-tflops=* ]] || peaks=''
  for blocks in 64,32,128 128,64,128; do
    timeout 45 "$python" -m benchmarks.pallas_separable --batch="$batch" --blocks="$blocks" \
        ${SMALL:+--repeats=1}
  done
  common=(--model=xception --dtype=bfloat16 --batch="$batch" --image-size="$size"
          --warmup=3 --repeats=10 --worker-timeout=120 $peaks)
  timeout 220 "$python" -m benchmarks.throughput "${common[@]}" --mode=train,infer \
      --peers=timm-cl,timm \
      --note="gpu_check.sh; XLA's default GPU options; roofline against device_ceilings"
  XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout 80 "$python" -m benchmarks.throughput \
      "${common[@]}" --mode=train --peers= --trace-dir="$trace" \
      --note="gpu_check.sh; XLA's CUDA graphs off (a per-kernel profile)"
  TF_CPP_MIN_LOG_LEVEL=0 timeout 60 "$python" -m benchmarks.throughput "${common[@]}" \
      --mode=train --peers= --no-record --ours=shifted_dw_dot:depthwise_impl=shifted,pointwise_impl=dot \
      --ours=dot:pointwise_impl=dot
  JAX_DEFAULT_MATMUL_PRECISION=highest timeout 50 "$python" -m pytest -q -p no:cacheprovider \
      tests/test_ops.py tests/test_pallas_separable.py -k 'fused_batch_norm or pallas or separable'
  echo "tests exit: $?"
} 2>&1 | tee "$out/gpu_check.log"
tail -n +"$((lines_before + 1))" "$results" > "$out/RESULTS_new.md"
tar -czf "$out/gpu_check_trace.tgz" -C "$trace" .
