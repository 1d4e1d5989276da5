#!/usr/bin/env bash
# The GPU measurements of docs/performance.md as one command of under ten
# minutes: `bash benchmarks/gpu_check.sh` from the repository root on a GPU machine.
#
# It uses the machine's own python3 (JAX with CUDA, flax, optax, torch, timm)
# and, within its step limits:
#   ceilings    the device's two roofline ceilings (benchmarks/device_ceilings.py);
#   train       bfloat16 training of $MODELS (default: all four) at batch $BATCH,
#               the trainer's own step ('auto': XLA's convs and our fused batch norm
#               on a GPU), Xception also with remat, next to timm with AMP in
#               channels-last, with XLA's cost analysis, the roofline against the
#               measured ceilings and a per-operation profile (in $OUT/trace);
#   infer       inference of the same models, ours next to timm channels-last;
#   pipeline    the input pipeline's images/s per host core (benchmarks/input_pipeline.py),
#               to set beside the GPU's training rate;
#   abort       compiles the form pair that aborted XLA's GPU compiler on
#               2026-11-27 ('shifted' depthwise with 'dot' pointwise) and 'dot'
#               alone, with XLA's log on, to name the failing check;
#   tests       the fused batch norm against flax's (float32 at highest matmul
#               precision) and the Pallas kernel's tests;
#   pallas      (not run by default: concluded 2026-11-28, slower than XLA's two
#               convs at every shape) the fused depthwise + pointwise Pallas
#               kernel against XLA's two convs, three block sizes.
# Under a 10-minute limit per command, run it in two calls:
#   STEPS="ceilings train" bash benchmarks/gpu_check.sh
#   STEPS="infer pipeline tests" bash benchmarks/gpu_check.sh
# STEPS="train infer" (say) runs only those steps, for a quick rerun.
# On an H200 (2026-11-28) a training variant took 55-70 s (compile 49-54 s),
# a timm one 25-30 s.
# Wheels in .whl/ (ignored by git) are installed first, for a machine whose Python
# lacks a package the training step imports (ml_collections, say):
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/pip download --no-deps --only-binary=:all: -d .whl ml-collections==1.1.0
# The log and the RESULTS.md sections it appended land in $OUT (default
# ./gpu_check_out); copy the sections into benchmarks/RESULTS.md.
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
if compgen -G '.whl/*.whl' > /dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
want() { [[ " ${STEPS:-ceilings train infer pipeline abort tests} " == *" $1 "* ]]; }
models=${MODELS:-xception,inception_v3,inception_v4,inception_resnet_v2}
peaks=''
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$python" -c 'import jax, flax, optax, torch, timm; print("jax", jax.__version__,
      jax.devices(), "flax", flax.__version__, "optax", optax.__version__, "torch",
      torch.__version__, "timm", timm.__version__)'
  want ceilings && peaks=$(timeout 40 "$python" -m benchmarks.device_ceilings $small | tee /dev/stderr | tail -1)
  [[ $peaks == --peak-tflops=* ]] || peaks=''
  want pallas && timeout 110 "$python" -m benchmarks.pallas_separable --batch="$batch" --blocks=64,32,128,4 \
      --blocks=128,64,128,4 --blocks=128,32,256,8 ${SMALL:+--repeats=1}
  common=(--dtype=bfloat16 --batch="$batch" --image-size="$size"
          --warmup=3 --repeats=10 --worker-timeout=150 $peaks)
  note="gpu_check.sh; XLA's default GPU options; roofline against device_ceilings"
  want train && timeout 520 "$python" -m benchmarks.throughput "${common[@]}" --model="$models" \
      --mode=train --peers=timm-cl --ours=auto: --ours=remat:remat=True \
      --trace-dir="$out/trace" --note="$note"
  want infer && timeout 300 "$python" -m benchmarks.throughput "${common[@]}" --model="$models" \
      --mode=infer --peers=timm-cl --note="$note"
  want pipeline && timeout 120 "$python" -m benchmarks.input_pipeline --image_size="$size" \
      --results="$results"
  want abort && timeout 60 "$python" -m benchmarks.throughput "${common[@]}" --model=xception \
      --mode=train --peers= --no-record --env=TF_CPP_MIN_LOG_LEVEL=0 --ours=shifted_dw_dot:depthwise=shifted,pointwise=dot \
      --ours=dot:pointwise=dot
  want tests && JAX_DEFAULT_MATMUL_PRECISION=highest timeout 60 "$python" -m pytest -q -p no:cacheprovider \
      tests/test_ops.py tests/test_pallas_separable.py -k 'fused_batch_norm or pallas or separable'
  want tests && echo "tests exit: $?"
} 2>&1 | tee "$out/gpu_check.log"
tail -n +"$((lines_before + 1))" "$results" > "$out/RESULTS_new.md"
