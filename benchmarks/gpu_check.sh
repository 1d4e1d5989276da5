#!/usr/bin/env bash
# Issue 6's GPU measurements as one prepared command, for a session lent a GPU
# machine (device tool: run `bash benchmarks/gpu_check.sh`, timeout_s=540).
#
# It uses the machine's own python3 (JAX with CUDA, flax, optax, torch, timm;
# nothing is installed) and, in about 7 minutes:
#   1. measures the device's two roofline ceilings (benchmarks/device_ceilings.py);
#   2. measures bfloat16 Xception training at batch 128: XLA's forms, our CPU
#      forms one by one, timm with AMP in channels-last and NCHW, with XLA's
#      cost analysis, the roofline against the measured ceilings, and a
#      per-operation profile of each of our variants (gpu_check_trace.tgz);
#   3. checks what Pallas compiles there (.devrun/pallas_probe.py, if carried);
#   4. checks that our depthwise, pointwise, pool and norm forms equal XLA's on
#      the GPU (tests/test_ops.py, float32 at highest matmul precision).
# The log, the RESULTS.md sections it appended and the profiles land in $OUT
# (default ./gpu_check_out); copy the sections into benchmarks/RESULTS.md.
# CPU smoke run: BATCH=2 IMAGE_SIZE=71 CEILINGS='--matmul=256 --copy-mib=16' PYTHON=.venv/bin/python
set -uo pipefail
out=${OUT:-gpu_check_out}
mkdir -p "$out"
python=${PYTHON:-python3}
batch=${BATCH:-128}
size=${IMAGE_SIZE:-299}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
results=benchmarks/RESULTS.md
lines_before=$(wc -l < "$results")
trace=$(mktemp -d)
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$python" -c 'import jax, flax, optax, torch, timm; print("jax", jax.__version__,
      jax.devices(), "flax", flax.__version__, "optax", optax.__version__, "torch",
      torch.__version__, "timm", timm.__version__)'
  peaks=$(timeout 60 "$python" -m benchmarks.device_ceilings ${CEILINGS:-} | tee /dev/stderr | tail -1)
  [[ $peaks == --peak-tflops=* ]] || peaks=''
  forms=(--ours=xla:depthwise_impl=xla,pointwise_impl=xla,pool_impl=xla,norm_impl=xla
         --ours=cpu_forms:depthwise_impl=shifted,pointwise_impl=dot,pool_impl=shifted,norm_impl=fused
         --ours=shifted_dw:depthwise_impl=shifted
         --ours=shifted_dw_dot:depthwise_impl=shifted,pointwise_impl=dot)
  timeout 330 "$python" -m benchmarks.throughput --model=xception --dtype=bfloat16 \
      --batch="$batch" --image-size="$size" --mode=train --warmup=3 --repeats=10 \
      --peers=timm-cl,timm "${forms[@]}" $peaks --worker-timeout=120 --trace-dir="$trace" \
      --note="gpu_check.sh; XLA's default GPU options; roofline against device_ceilings"
  if [[ -f .devrun/pallas_probe.py ]]; then timeout 40 "$python" .devrun/pallas_probe.py; fi
  skip='synchronises or compiler_options or im2col or scatter_windows or inception_v3'
  JAX_DEFAULT_MATMUL_PRECISION=highest timeout 100 "$python" -m pytest -q -p no:cacheprovider \
      tests/test_ops.py -k "not ($skip)"
  echo "test_ops exit: $?"
} 2>&1 | tee "$out/gpu_check.log"
tail -n +"$((lines_before + 1))" "$results" > "$out/RESULTS_new.md"
tar -czf "$out/gpu_check_trace.tgz" -C "$trace" .
