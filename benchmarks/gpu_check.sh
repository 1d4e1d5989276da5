#!/usr/bin/env bash
# Issue 6's GPU measurements as one prepared command, for a session lent a GPU
# machine (device tool: run `bash benchmarks/gpu_check.sh`, timeout_s=600).
#
# It uses the machine's own python3 (JAX with CUDA, flax, optax, torch, timm;
# nothing is installed) and, within about 8 minutes:
#   1. checks that our depthwise, pointwise, pool and norm forms equal XLA's on
#      the GPU (tests/test_ops.py, float32 at highest matmul precision);
#   2. measures bfloat16 Xception training and inference, ours next to timm
#      with AMP, NCHW and channels-last, batch 128, with XLA's cost analysis
#      and the roofline fraction (benchmarks/throughput.py);
#   3. measures our 'shifted' depthwise form against XLA's grouped conv, the
#      choice behind `depthwise_impl='auto'` on GPU.
# The log and the RESULTS.md sections it appended land in $OUT (default
# ./gpu_check_out); copy the sections into benchmarks/RESULTS.md.
set -uo pipefail
out=${OUT:-gpu_check_out}
mkdir -p "$out"
python=${PYTHON:-python3}
batch=${BATCH:-128}        # BATCH=2 IMAGE_SIZE=71 PYTHON=.venv/bin/python: a CPU smoke run.
size=${IMAGE_SIZE:-299}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
results=benchmarks/RESULTS.md
lines_before=$(wc -l < "$results")
note="gpu_check.sh; XLA's default GPU options"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$python" -c 'import jax, flax, optax, torch, timm; print("jax", jax.__version__,
      jax.devices(), "flax", flax.__version__, "torch", torch.__version__, "timm",
      timm.__version__)'
  JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 "$python" -m pytest -q -x \
      -p no:cacheprovider tests/test_ops.py -k 'not synchronises and not compiler_options'
  echo "test_ops exit: $?"
  common=(--model=xception --dtype=bfloat16 --batch="$batch" --image-size="$size"
          --warmup=3 --repeats=10 --note="$note")
  timeout 240 "$python" -m benchmarks.throughput "${common[@]}" --mode=train,infer \
      --peers=timm,timm-cl
  timeout 120 "$python" -m benchmarks.throughput "${common[@]}" --mode=train --peers= \
      --ours=auto --ours=shifted:depthwise_impl=shifted
} 2>&1 | tee "$out/gpu_check.log"
tail -n +"$((lines_before + 1))" "$results" > "$out/RESULTS_new.md"
