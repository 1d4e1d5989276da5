"""Training and inference throughput of the trainer's own step next to timm/PyTorch and Keras 3.

    python -m benchmarks.throughput --model=xception --batch=8 --image-size=299 \
        --mode=train --dtype=float32 [--config=configs/imagenet.py]

Every framework runs in its own subprocess, one after the other and, with
`--rounds` > 1, interleaved round by round, so all see the same machine and
load; peak memory is then per framework. Ours (`train`) is the trainer's
training step for the model's recipe config (or `--config`), built by
`xception_jax.trainer.timing` from the trainer's `Setup`: the same jitted
function, optimizer, weight decay, Polyak averaging, finiteness guard,
shardings, donation and compiler options; `infer` is the trainer's evaluation
step. The peers run the same recipe as their users would: the config's
optimizer (SGD with momentum, or TF-style RMSprop: timm's RMSpropTF) with its
weight decay and label smoothing, and Polyak averaging of the parameters and
BN statistics (timm: one fused lerp, as its ModelEmaV3; Keras: the
optimizer's `use_ema`); timm in both layouts (NCHW and channels-last). All
on a fixed random batch (no input pipeline). Images/s is the batch over the
median step time after `--warmup` untimed steps; compile time (JAX and
Keras: tracing and XLA compilation; PyTorch: none) is reported apart; the
headline ratio is ours over the fastest peer configuration. Peak memory is the process's
peak resident set and, on a GPU, the framework's peak device allocation; for
our models also XLA's own buffer assignment of the compiled step, per image.

On a GPU (JAX's default backend; PyTorch takes CUDA when it sees one, or
`--torch-device`), timm runs with cuDNN autotuning and, for bfloat16, AMP
autocast. Our rows carry XLA's cost analysis of the compiled step (FLOP and
bytes accessed per image) and, where the device's peaks are known (`PEAKS`)
or given (`--peak-tflops`, `--peak-tbps`), the roofline: the images/s that
the slower of compute and memory allows, and the fraction of it measured.

Several models, batches and modes: give comma-separated lists. `--ours`
adds variants of our model (`name:option=value,...`, optionally
`@XLA_FLAGS`), e.g. `--ours=xla:depthwise=xla,pointwise=xla` (the fields of
`models.Execution` set how operations are computed); an option named
`xla_...` is a compiler option over the model's defaults (the config's
`compiler_options`, e.g. `xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED`),
`steps_per_call=N` runs N steps per jitted call as the training loop's option
of that name does (training only; times are still per step), any other a model option.
`--trace-dir DIR` profiles one step of each of our variants after timing it
(time per XLA operation, asynchronous ones such as XLA's CPU convolutions from
launch to completion, and the compiled HLO, for finding where a step's time
goes); `--worker-timeout` abandons a framework that takes longer, keeping
what the others measured.
`--env NAME=VALUE` sets an environment variable for every framework alike,
e.g. `--env LD_PRELOAD=libtcmalloc_minimal.so.4` (tcmalloc, which
`python -m xception_jax.main` runs with under `XCEPTION_JAX_MALLOC=tcmalloc`) or
`--env GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (transparent huge pages for
glibc's malloc): all of them take their activations from malloc.
`--as-main-job` starts our processes as `python -m xception_jax.main` starts:
with the allocator it picks for itself in that environment
(trainer/host_memory.py: on a CPU host glibc keeping its heap, with huge
pages, and computations on the calling thread), on top of `--env`; the
peers run as given. The entry records what ours ran with.
The table is printed and, unless `--no-record`, appended to
benchmarks/RESULTS.md with the machine, versions, date, load and command.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Optional

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'RESULTS.md')
# Peers of each of our models: timm name (None: not in timm) and keras.applications name.
PEERS = {
    'xception': ('legacy_xception', 'Xception'),
    'inception_v3': ('inception_v3', 'InceptionV3'),
    'inception_v4': ('inception_v4', None),
    'inception_resnet_v2': ('inception_resnet_v2', 'InceptionResNetV2'),
}
FRAMEWORKS = ('ours', 'timm', 'timm-cl', 'keras')
# The config each model's training step is timed with unless --config names another.
RECIPES = {'xception': 'configs/imagenet.py', 'inception_v3': 'configs/inception_v3.py',
           'inception_v4': 'configs/inception_v4.py',
           'inception_resnet_v2': 'configs/inception_resnet_v2.py'}
# Dense bfloat16 tensor-core TFLOP/s and memory TB/s, by a substring of JAX's
# device_kind (vendor data sheets). float32 steps are bounded with half the
# TFLOP/s: XLA runs float32 GPU matrix products as TF32 by default.
PEAKS = {'H200': (989.0, 4.8), 'H100 80GB HBM3': (989.0, 3.35), 'H100 PCIe': (756.0, 2.0),
         'A100-SXM4-80GB': (312.0, 2.04), 'A100-SXM4-40GB': (312.0, 1.56)}


# ----------------------------------------------------------------------------------------------
# Workers: each measures one framework in a fresh process and prints one JSON line.

def time_steps(step: Callable[[], Any], warmup: int, repeats: int) -> dict[str, Any]:
  """{'times': seconds of each timed step, 'fault_mib_per_step': memory first touched per step}.

  Page faults count memory the allocator mapped afresh (and the kernel zeroed)
  during the timed steps, a cost every framework pays unless memory is reused.
  """
  for _ in range(warmup):
    step()
  times = []
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
  return dict(times=times,
              fault_mib_per_step=faults * resource.getpagesize() / 2**20 / max(repeats, 1))


def trace_step(step: Callable[[], Any], hlo_text: str, trace_dir: str, stem: str) -> None:
  """Profiles one `step` and writes `stem`.ops.json (time per XLA operation) and .hlo.txt.gz.

  ops.json maps each profiler track ('process/thread') to [name, total µs,
  count] rows, slowest first (`operation_times`); on a GPU the device's track
  names every kernel's HLO operation, which the compiled HLO text explains.
  """
  import glob
  import gzip
  import tempfile

  import jax
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      step()
    events = []
    for path in glob.glob(os.path.join(tmp, '**', '*.trace.json.gz'), recursive=True):
      with gzip.open(path) as f:
        trace = json.load(f)
      events += trace['traceEvents'] if isinstance(trace, dict) else trace
  os.makedirs(trace_dir, exist_ok=True)
  with open(os.path.join(trace_dir, stem + '.ops.json'), 'w') as f:
    json.dump(operation_times(events), f)
  with gzip.open(os.path.join(trace_dir, stem + '.hlo.txt.gz'), 'wt') as f:
    f.write(hlo_text)


ASYNC_END = 'end: '   # XLA's CPU runtime marks where an asynchronous operation completes.


def operation_times(events: list[dict]) -> dict[str, list]:
  """Total µs and count per (track, operation) of a Chrome trace's complete ('X') events.

  Returns {'process/thread': [[name, µs, count], ...]}, slowest first. XLA's
  CPU runtime runs some operations (its Eigen convolutions) asynchronously:
  their event covers only the launch, and an 'end: NAME' event marks the
  completion. Such an operation is timed from its launch's start to its
  marker's end (a marker completes the latest launch of its operation before
  it), on the launch's track; the span overlaps other operations that ran
  meanwhile. The markers themselves are not listed.
  """
  import collections
  names = {}
  for e in events:
    if e.get('ph') == 'M' and e.get('name') in ('process_name', 'thread_name'):
      names[(e['pid'], e.get('tid') if e['name'] == 'thread_name' else None)] = e['args']['name']
  def operation(e):
    return (e.get('args') or {}).get('hlo_op') or e['name']

  def end(e):
    return e['ts'] + e.get('dur', 0)

  complete = sorted((e for e in events if e.get('ph') == 'X'), key=lambda e: e['ts'])
  # Each end marker completes the latest launch of its operation before it.
  completed, latest = {}, {}
  for i, e in enumerate(complete):
    if e['name'].startswith(ASYNC_END):
      launch = latest.pop(e['name'][len(ASYNC_END):], None)
      if launch is not None:
        completed[launch] = end(e)
    else:
      latest[operation(e)] = i
  total, count = collections.Counter(), collections.Counter()
  for i, e in enumerate(complete):
    if e['name'].startswith(ASYNC_END):
      continue
    process = names.get((e['pid'], None), e['pid'])
    key = (f"{process}/{names.get((e['pid'], e.get('tid')), e.get('tid'))}", operation(e))
    total[key] += max(end(e), completed.get(i, 0)) - e['ts']
    count[key] += 1
  tracks: dict[str, list] = collections.defaultdict(list)
  for (track, name), us in total.most_common():
    tracks[track].append([name, us, count[(track, name)]])
  return dict(tracks)


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB.


def recipe(args, options: Optional[dict[str, Any]] = None):
  """The config whose training step is timed: --config, else the model's recipe, at the
  benchmark's model, batch, input size and dtype; `options` set execution forms (the fields
  of `models.Execution`) and model options."""
  import dataclasses
  from xception_jax.models import Execution
  from xception_jax.trainer.config_defaults import load_config
  execution_fields = {field.name for field in dataclasses.fields(Execution)}
  config = load_config(args.config or RECIPES[args.model])
  config.model, config.batch_size, config.eval_batch_size = args.model, args.batch, 0
  config.image_size, config.dtype = args.image_size, args.dtype
  xla = []
  for key, value in (options or {}).items():
    if key in execution_fields:
      config.execution[key] = value
    elif key.startswith('xla_'):
      xla.append(f'{key}={value}')
    else:
      config.model_kwargs[key] = value
  config.compiler_options = ','.join(filter(None, [config.compiler_options, *xla]))
  return config


def worker_ours(args, options: dict[str, Any]) -> dict[str, Any]:
  import jax
  from xception_jax.trainer import host_memory, timing, train

  steps_per_call = int(options.pop('steps_per_call', 1))
  config = recipe(args, options)
  timed = (timing.training_step(config, steps_per_call) if args.mode == 'train' else
           timing.eval_step(config))
  train.exempt_from_collection()   # As the trainer does once its step is compiled.
  steps_per_call = timed.steps_per_call   # The evaluation step is one step per call.
  memory = timed.compiled.memory_analysis()
  cost = timed.compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  measured = time_steps(timed.run, args.warmup, args.repeats)
  measured = dict(times=[t / steps_per_call for t in measured['times']],   # Per step.
                  fault_mib_per_step=measured['fault_mib_per_step'] / steps_per_call)
  temp = getattr(memory, 'temp_size_in_bytes', None)
  device = jax.local_devices()[0]
  stats = device.memory_stats() or {}

  # XLA's cost analysis does not count the convs it hands to oneDNN (custom calls).
  counted = 'XjConv' not in timed.compiled.as_text()

  def per_image(key, unit):
    return cost[key] / unit / args.batch / steps_per_call if counted and cost.get(key) else None

  if args.trace_dir:   # After the result is printed: a failing profiler cannot lose it.
    _AFTER_RESULT.append(lambda: trace_step(
        timed.run, timed.compiled.as_text(), args.trace_dir,
        f'{args.model}_{args.mode}_b{args.batch}_{args.name}'))
  return dict(compile_s=timed.compile_seconds, **measured, peak_rss_mib=_peak_rss_mib(),
              xla_temp_mib_per_image=None if temp is None else temp / 2**20 / args.batch,
              device_peak_mib=stats['peak_bytes_in_use'] / 2**20
              if 'peak_bytes_in_use' in stats else None,
              gflop_per_image=per_image('flops', 1e9),
              gb_per_image=per_image('bytes accessed', 1e9),
              backend=jax.default_backend(), device_kind=device.device_kind,
              malloc=host_memory.describe() if args.as_main_job else None,
              optimizer=config.optimizer)


def worker_timm(args, channels_last: bool) -> dict[str, Any]:
  import timm
  import torch

  name = PEERS[args.model][0]
  device = torch.device(args.torch_device if args.torch_device != 'auto' else
                        'cuda' if torch.cuda.is_available() else 'cpu')
  cuda = device.type == 'cuda'
  torch.backends.cudnn.benchmark = True   # timm's own benchmark autotunes convs too.
  torch.manual_seed(0)
  model = timm.create_model(name, num_classes=1000).to(device)
  x = (torch.rand(args.batch, 3, args.image_size, args.image_size) * 2 - 1).to(device)
  labels = (torch.arange(args.batch) % 1000).to(device)
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == 'bfloat16')
  config = recipe(args)
  optimizer = timm_optimizer(config, model.parameters())
  # Polyak averaging of the parameters and BN statistics, as the trainer's step does (timm's
  # own ModelEmaV3 does it the same way: one fused lerp over the state).
  state = [t for t in model.state_dict().values() if t.is_floating_point()]
  averages = [t.detach().clone() for t in state]
  model.train(args.mode == 'train')

  def step():
    if args.mode == 'infer':
      with torch.inference_mode(), autocast:
        model(x)
    else:
      optimizer.zero_grad(set_to_none=True)
      with autocast:
        loss = torch.nn.functional.cross_entropy(model(x), labels,
                                                 label_smoothing=config.label_smoothing)
      loss.backward()
      optimizer.step()
      with torch.no_grad():
        torch._foreach_lerp_(averages, state, 1 - config.ema_decay)
    if cuda:
      torch.cuda.synchronize()   # CUDA runs asynchronously; time the finished step.

  timed = time_steps(step, args.warmup, args.repeats)
  return dict(compile_s=0.0, **timed, peak_rss_mib=_peak_rss_mib(),
              device_peak_mib=torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
              threads=torch.get_num_threads(), device_kind=str(device))


def timm_optimizer(config, parameters):
  """The config's optimizer as timm users run it: SGD with momentum, or TF-style RMSprop
  (timm.optim.RMSpropTF, the Inception recipes'), with the config's weight decay."""
  import torch
  if config.optimizer == 'rmsprop':
    from timm.optim import RMSpropTF
    return RMSpropTF(parameters, lr=0.01, alpha=config.rmsprop_decay, eps=config.rmsprop_epsilon,
                     momentum=config.momentum, weight_decay=config.weight_decay)
  return torch.optim.SGD(parameters, lr=0.01, momentum=config.momentum,
                         weight_decay=config.weight_decay)


def worker_keras(args) -> dict[str, Any]:
  os.environ['KERAS_BACKEND'] = 'jax'
  import keras
  import numpy as np

  if args.dtype == 'bfloat16':
    keras.mixed_precision.set_global_policy('mixed_bfloat16')
  constructor = getattr(keras.applications, PEERS[args.model][1])
  model = constructor(weights=None, input_shape=(args.image_size, args.image_size, 3))
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (args.batch, args.image_size, args.image_size, 3)).astype('float32')
  labels = np.arange(args.batch) % 1000
  config = recipe(args)
  if config.optimizer == 'rmsprop':
    optimizer = keras.optimizers.RMSprop(0.01, rho=config.rmsprop_decay, momentum=config.momentum,
                                         epsilon=config.rmsprop_epsilon, use_ema=True,
                                         ema_momentum=config.ema_decay)
  else:
    optimizer = keras.optimizers.SGD(0.01, momentum=config.momentum, use_ema=True,
                                     ema_momentum=config.ema_decay)
  model.compile(optimizer=optimizer, loss='sparse_categorical_crossentropy', jit_compile=True)
  step = ((lambda: model.predict_on_batch(x)) if args.mode == 'infer' else
          (lambda: model.train_on_batch(x, labels)))
  start = time.perf_counter()
  step()   # Traces and compiles.
  compile_s = time.perf_counter() - start
  timed = time_steps(step, max(args.warmup - 1, 0), args.repeats)
  return dict(compile_s=compile_s, **timed, peak_rss_mib=_peak_rss_mib())


# Work a worker does after printing its result (profiling), so that a failure
# or a time limit there cannot lose the measurement.
_AFTER_RESULT: list[Callable[[], None]] = []


def run_worker(args) -> None:
  framework = args.worker
  if framework == 'ours':
    if args.as_main_job:   # Before JAX is imported, as the main job does it.
      from xception_jax.trainer import host_memory
      host_memory.reexec_with_allocator()
      host_memory.configure_jax()
    result = worker_ours(args, ast.literal_eval(args.options))
  elif framework in ('timm', 'timm-cl'):
    result = worker_timm(args, channels_last=framework == 'timm-cl')
  else:
    result = worker_keras(args)
  print('RESULT ' + json.dumps(result), flush=True)
  for extra in _AFTER_RESULT:
    try:
      extra()
    except Exception as e:   # An extra (the profile) must not fail the measurement.
      print(f'{type(e).__name__}: {e}', file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Driver.

def parse_variant(spec: str) -> tuple[str, dict[str, Any], str]:
  """'name:key=value,...@XLA_FLAGS' → (name, options, flags); values are Python literals."""
  spec, _, flags = spec.partition('@')
  name, _, options = spec.partition(':')
  parsed = {}
  for item in filter(None, options.split(',')):
    key, _, value = item.partition('=')
    try:
      parsed[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      parsed[key] = value
  return name or 'ours', parsed, flags


def installed(module: str) -> bool:
  import importlib.util
  return importlib.util.find_spec(module) is not None


def measure(args, framework: str, model: str, batch: int, mode: str,
            options: Optional[dict] = None, flags: str = '',
            name: str = '') -> Optional[dict[str, Any]]:
  """Runs one worker; its result dict, or None (with the reason printed) if it failed."""
  command = [sys.executable, '-m', 'benchmarks.throughput', f'--worker={framework}',
             f'--name={name or framework}', f'--trace-dir={args.trace_dir or ""}',
             f'--model={model}', f'--batch={batch}', f'--mode={mode}',
             f'--image-size={args.image_size}', f'--dtype={args.dtype}',
             f'--warmup={args.warmup}', f'--repeats={args.repeats}',
             f'--torch-device={args.torch_device}', f'--options={options or {}!r}',
             f'--config={args.config}'] + ['--as-main-job'] * args.as_main_job
  env = worker_environment(args.env, flags)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True,
                          timeout=args.worker_timeout)
    stdout = proc.stdout
  except subprocess.TimeoutExpired as e:   # It may have measured before the limit.
    print(f'  {name or framework} {model}: over --worker-timeout={args.worker_timeout} s',
          file=sys.stderr)
    stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ''
    proc = subprocess.CompletedProcess(command, 'timeout', stdout, '')
  for line in stdout.splitlines():
    if line.startswith('RESULT '):
      result = json.loads(line[len('RESULT '):])
      # Printed at once, so a run cut short still shows what it measured.
      print(f'  {name or framework}: {batch / statistics.median(result["times"]):.2f} images/s, '
            f'compile {result["compile_s"]:.1f} s', file=sys.stderr)
      return result
  lines = (proc.stderr or proc.stdout).strip().splitlines()
  # A crash's own message (an XLA check, a Python error) comes before its stack trace.
  cause = [line for line in lines[:-3] if re.search(r'Check failed|Error|error:|^F\d{4}', line)]
  print(f'  {name or framework} {model} failed (exit {proc.returncode}): '
        f'{" | ".join(cause[:1] + lines[-3:])}', file=sys.stderr)
  return None


def machine() -> str:
  """The CPU, with its family and model numbers and widest vector instructions (a VM's
  model name alone, 'AMD EPYC', does not tell its generation), cores and kernel."""
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      fields = dict(line.split(':', 1) for line in f.read().split('\n\n')[0].splitlines()
                    if ':' in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = fields.get('flags', '').split()
    vectors = 'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2'
    cpu = (f"{fields['model name']} (family {fields.get('cpu family', '?')}, "
           f"model {fields.get('model', '?')}, {vectors})")
  except (OSError, KeyError):
    pass
  return f'{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}'


def versions() -> str:
  from importlib import metadata
  out = []
  for package in ('jax', 'jaxlib', 'flax', 'torch', 'timm', 'keras'):
    try:
      out.append(f'{package} {metadata.version(package)}')
    except metadata.PackageNotFoundError:
      pass
  return ', '.join(out)


# Variables that change how fast any framework runs, recorded with the results.
TUNING_VARIABLES = ('XLA_FLAGS', 'GLIBC_TUNABLES', 'LD_PRELOAD', 'OMP_NUM_THREADS',
                    'MALLOC_ARENA_MAX', 'MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_')


def worker_environment(extra: dict[str, str], flags: str = '') -> dict[str, str]:
  """A worker's environment: ours, quiet TensorFlow logs and Keras on JAX, then `extra` (--env)
  over them, then `flags` appended to XLA_FLAGS."""
  env = {**os.environ, 'KERAS_BACKEND': 'jax', 'TF_CPP_MIN_LOG_LEVEL': '3', **extra}
  if flags:
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' ' + flags).strip()
  return env


def parse_env(items: list[str]) -> dict[str, str]:
  """['NAME=VALUE', ...] → {NAME: VALUE}; a malformed item raises a one-line ValueError."""
  env = {}
  for item in items:
    name, sep, value = item.partition('=')
    if not sep or not name.isidentifier():
      raise ValueError(f'--env takes NAME=VALUE, got {item!r}.')
    env[name] = value
  return env


def tuning_environment(env: dict[str, str]) -> str:
  """The tuning variables every framework ran with, as `NAME=VALUE` words ('none')."""
  merged = dict(os.environ, **env)
  return ' '.join(f'{n}={merged[n]}' for n in TUNING_VARIABLES if merged.get(n)) or 'none'


def device_peaks(device_kind: str, dtype: str, tflops: Optional[float] = None,
                 tbps: Optional[float] = None) -> Optional[tuple[float, float]]:
  """(TFLOP/s, TB/s) of the device for `dtype`: given ones win, else `PEAKS`; None if unknown."""
  known = next((peaks for kind, peaks in PEAKS.items() if kind in device_kind), None)
  if known and dtype != 'bfloat16':
    known = (known[0] / 2, known[1])
  tflops = tflops or (known and known[0])
  tbps = tbps or (known and known[1])
  return (tflops, tbps) if tflops and tbps else None


def roofline(gflop_per_image: float, gb_per_image: float,
             peaks: tuple[float, float]) -> tuple[float, str]:
  """(images/s that the device's peaks allow, 'compute' or 'memory': the bound that binds)."""
  compute_s = gflop_per_image / (peaks[0] * 1e3)
  memory_s = gb_per_image / (peaks[1] * 1e3)
  return 1 / max(compute_s, memory_s), 'compute' if compute_s >= memory_s else 'memory'


def load() -> str:
  return ' '.join(f'{x:.2f}' for x in os.getloadavg())


def append_table(path: str, module: str, argv: Optional[list[str]], title: str,
                 table: str) -> None:
  """Appends `table` to the log at `path` under a heading of the time and `title`, with the
  command (`python -m module argv`, argv defaulting to this process's), machine, versions
  and load."""
  command = f'python -m {module} ' + ' '.join(
      shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
  today = datetime.datetime.now().strftime('%Y-%m-%d %H:%M')
  with open(path, 'a') as f:
    f.write(f'\n## {today}: {title}\n\n- command: `{command}`\n- machine: {machine()}\n'
            f'- versions: {versions()}\n- load average (1, 5, 15 min) after: {load()}\n\n'
            f'{table}\n')


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='xception', help='comma-separated registry names')
  parser.add_argument('--batch', default='8', help='comma-separated batch sizes')
  parser.add_argument('--image-size', type=int, default=299)
  parser.add_argument('--mode', default='train', help='train, infer, or both comma-separated')
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--config', default='',
                      help="config whose training step is timed (default: the model's recipe, "
                           'configs/imagenet.py for xception, configs/<model>.py otherwise)')
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--rounds', type=int, default=1,
                      help='measure every framework this many times, interleaved')
  parser.add_argument('--peers', default='timm,timm-cl,keras',
                      help='timm (NCHW), timm-cl (channels-last), keras; "" for none')
  parser.add_argument('--ours', action='append', default=None,
                      help='variant of our model, name:option=value,...[@XLA_FLAGS]; repeatable')
  parser.add_argument('--torch-device', default='auto',
                      help='device for timm: auto (CUDA if PyTorch sees one), cpu, cuda, ...')
  parser.add_argument('--peak-tflops', type=float, default=None,
                      help='device peak TFLOP/s for the roofline (default: PEAKS by device)')
  parser.add_argument('--peak-tbps', type=float, default=None,
                      help='device memory TB/s for the roofline (default: PEAKS by device)')
  parser.add_argument('--env', action='append', default=[],
                      help='NAME=VALUE for every framework\'s process; repeatable')
  parser.add_argument('--as-main-job', action='store_true',
                      help='start our processes as python -m xception_jax.main starts: with '
                           'the malloc it picks for itself (on a CPU host, glibc keeping its heap)')
  parser.add_argument('--worker-timeout', type=float, default=None,
                      help='seconds after which one framework\'s measurement is abandoned')
  parser.add_argument('--trace-dir', default='',
                      help='profile one step of each of our variants; per-operation times '
                           'and the compiled HLO are written here')
  parser.add_argument('--no-record', action='store_true', help='do not append to RESULTS.md')
  parser.add_argument('--note', default='', help='a line recorded with the results')
  parser.add_argument('--worker', choices=FRAMEWORKS, help=argparse.SUPPRESS)
  parser.add_argument('--options', default='{}', help=argparse.SUPPRESS)
  parser.add_argument('--name', default='', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  try:
    args.env = parse_env(args.env)
  except ValueError as e:
    parser.error(str(e))
  if args.worker:
    args.batch = int(args.batch)
    return run_worker(args)
  if args.as_main_job:   # A bad XCEPTION_JAX_MALLOC: one line now, not a failed worker later.
    from xception_jax.trainer import host_memory
    try:
      host_memory.describe(worker_environment(args.env))
    except ValueError as e:
      parser.error(str(e))

  if args.trace_dir:
    args.trace_dir = os.path.abspath(args.trace_dir)   # Workers run in the project root.
  variants = [parse_variant(v) for v in (args.ours or ['ours'])]
  peers = [p for p in args.peers.split(',') if p]
  available = {'timm': installed('timm') and installed('torch'),
               'timm-cl': installed('timm') and installed('torch'), 'keras': installed('keras')}
  command = 'python -m benchmarks.throughput ' + ' '.join(
      shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
  load_before = load()
  rows, ours_malloc = [], set()
  for model in args.model.split(','):
    for batch in map(int, args.batch.split(',')):
      for mode in args.mode.split(','):
        jobs = [(name, 'ours', options, flags) for name, options, flags in variants]
        jobs += [(p, p, None, '') for p in peers
                 if available.get(p) and PEERS.get(model, (None, None))[p == 'keras'] is not None]
        results: dict[str, list[dict]] = {name: [] for name, *_ in jobs}
        for _ in range(args.rounds):
          # Peers first: a run cut short (a time limit) keeps the baseline it compares with.
          for name, framework, options, flags in sorted(jobs, key=lambda j: j[1] == 'ours'):
            print(f'measuring {model} batch {batch} {mode}: {name} ...', file=sys.stderr)
            result = measure(args, framework, model, batch, mode, options, flags, name)
            if result:
              results[name].append(result)
              ours_malloc.add(result.get('malloc'))
        rows += summarize(model, batch, mode, args.dtype, results,
                          peaks=(args.peak_tflops, args.peak_tbps))
  table = format_table(rows)
  print(table)
  ours_malloc = ', '.join(sorted(filter(None, ours_malloc)))
  if ours_malloc:
    print(f"ours' malloc, as the main job's: {ours_malloc}", file=sys.stderr)
  if not args.no_record:
    record(args, table, command, load_before, ours_malloc)


def summarize(model, batch, mode, dtype, results,
              peaks=(None, None)) -> list[dict[str, Any]]:
  """One row per framework/variant: median images/s, memory, cost, roofline and ratios."""
  rows = []
  for name, runs in results.items():
    if not runs:
      continue
    step = statistics.median(t for run in runs for t in run['times'])
    first = runs[0]
    row = dict(model=model, batch=batch, mode=mode, dtype=dtype, name=name,
               step_s=step, images_s=batch / step,
               compile_s=statistics.median(r['compile_s'] for r in runs),
               peak_rss_mib=max(r['peak_rss_mib'] for r in runs),
               device_peak_mib=max((r.get('device_peak_mib') or 0 for r in runs), default=0),
               fault_mib=statistics.median(r['fault_mib_per_step'] for r in runs),
               xla_mib_per_image=first.get('xla_temp_mib_per_image'),
               gflop_per_image=first.get('gflop_per_image'),
               gb_per_image=first.get('gb_per_image'), roofline=None,
               spread=(min(t for r in runs for t in r['times']),
                       max(t for r in runs for t in r['times'])))
    device_peak = device_peaks(first.get('device_kind', ''), dtype, *peaks)
    if device_peak and row['gflop_per_image'] and row['gb_per_image']:
      bound, binding = roofline(row['gflop_per_image'], row['gb_per_image'], device_peak)
      row['roofline'] = (bound, row['images_s'] / bound, binding)
    rows.append(row)
  ours = [r for r in rows if r['name'] not in FRAMEWORKS[1:]]
  peers = [r for r in rows if r['name'] in FRAMEWORKS[1:]]
  fastest = max(peers, key=lambda p: p['images_s'], default=None)
  for row in rows:
    row['ratios'] = {p['name']: row['images_s'] / p['images_s'] for p in peers} \
        if row in ours else {}
    row['versus_fastest'] = (fastest['name'], row['images_s'] / fastest['images_s']) \
        if row in ours and fastest else None
  return rows


def format_table(rows) -> str:
  lines = ['| model | batch | mode | dtype | run | images/s | ours ÷ fastest peer '
           '| s/step (min–max) | compile s | peak RSS MiB | XLA MiB/image '
           '| page faults MiB/step | ours ÷ each peer | device peak MiB | XLA GFLOP, GB/image '
           '| roofline images/s (measured fraction) |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    ratios = ', '.join(f'{v:.2f}× {k}' for k, v in r['ratios'].items()) or ''
    per_image = '' if r['xla_mib_per_image'] is None else f"{r['xla_mib_per_image']:.0f}"
    device = f"{r['device_peak_mib']:.0f}" if r['device_peak_mib'] else ''
    cost = (f"{r['gflop_per_image']:.4g}, {r['gb_per_image']:.4g}"
            if r['gflop_per_image'] and r['gb_per_image'] else '')
    bound = r['roofline'] and '{:.1f} ({:.3f}, {})'.format(*r['roofline'])
    versus = r['versus_fastest'] and '**{1:.2f}×** {0}'.format(*r['versus_fastest'])
    lines.append(f"| {r['model']} | {r['batch']} | {r['mode']} | {r['dtype']} | {r['name']} "
                 f"| {r['images_s']:.2f} | {versus or ''} | {r['step_s']:.3g} ({r['spread'][0]:.3g}–"
                 f"{r['spread'][1]:.3g}) | {r['compile_s']:.1f} | {r['peak_rss_mib']:.0f} "
                 f"| {per_image} | {r['fault_mib']:.0f} | {ratios} | {device} | {cost} "
                 f"| {bound or ''} |")
  return '\n'.join(lines)


def record(args, table: str, command: str, load_before: str, ours_malloc: str) -> None:
  import jax
  today = datetime.datetime.now().strftime('%Y-%m-%d %H:%M')
  header = '' if os.path.exists(RESULTS) else (
      '# Throughput results\n\nAppended by `python -m benchmarks.throughput`; newest last.\n')
  text = (f'{header}\n## {today}: {args.model}, batch {args.batch}, {args.mode}, {args.dtype}\n\n'
          f'- command: `{command}`\n- machine: {machine()}; JAX backend: '
          f'{jax.default_backend()} ({jax.devices()[0].device_kind})\n- versions: {versions()}\n'
          f'- load average (1, 5, 15 min) before: {load_before}; after: {load()}\n'
          f'- environment of every framework: {tuning_environment(args.env)}\n'
          + (f"- ours started as the main job starts (--as-main-job), malloc: {ours_malloc}\n"
             if ours_malloc else '') +
          f'- {args.warmup} warm-up step(s), median of {args.repeats} timed steps × '
          f'{args.rounds} round(s) per framework\n')
  if args.note:
    text += f'- note: {args.note}\n'
  with open(RESULTS, 'a') as f:
    f.write(text + '\n' + table + '\n')


if __name__ == '__main__':
  main()
