"""The benchmark commands run end to end and record what they measured (no timing asserted)."""
import gzip
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from run_helpers import environment

ROOT = Path(__file__).resolve().parent.parent
# The benchmark measures timm where it and torch are installed (not in CI).
TIMM_INSTALLED = all(importlib.util.find_spec(m) for m in ('timm', 'torch'))


def run(*args):
  """A benchmark command's output; on one CPU device, as a user runs it."""
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, capture_output=True, text=True,
                        check=True, env=environment(devices=1)).stdout


XLA_FORMS = ('width_multiplier=0.25,middle_flow_repeats=0,'
             'depthwise="shifted",pointwise="dot",conv="xla"')


@pytest.mark.long(seconds=30)
def test_throughput_prints_a_row_per_variant(tmp_path):
  out = run('benchmarks.throughput', '--model=xception', '--batch=2', '--image-size=71',
            '--mode=train,infer', '--warmup=0', '--repeats=1', '--peers=timm', '--no-record',
            '--env=GLIBC_TUNABLES=glibc.malloc.hugetlb=1', '--peak-tflops=1', '--peak-tbps=0.01',
            # XLA's forms: its cost analysis does not count the convs handed to oneDNN.
            f'--ours=tiny:{XLA_FORMS}', f'--ours=tiny-2:{XLA_FORMS},steps_per_call=2',
            f'--trace-dir={tmp_path}')
  all_rows = [line.split('|') for line in out.splitlines() if line.startswith('| xception')]
  assert [(r[3].strip(), r[5].strip()) for r in all_rows] == [
      (mode, name) for mode in ('train', 'infer')
      for name in ('tiny', 'tiny-2', *(['timm'] if TIMM_INSTALLED else []))]
  assert all(float(r[6]) > 0 for r in all_rows)      # images/s, timm's where installed
  by_name = {(r[3].strip(), r[5].strip()): r for r in all_rows}
  # Two steps per call: the cost is reported per step. Evaluation has one step per call, so
  # there the option changes nothing (the cost was once divided by two all the same).
  for mode in ('train', 'infer'):
    per_step = [float(by_name[mode, name][15].split(',')[0]) for name in ('tiny', 'tiny-2')]
    assert per_step[1] == pytest.approx(per_step[0], rel=0.02), mode
  rows = [by_name[mode, 'tiny'] for mode in ('train', 'infer')]
  assert all(float(r[12]) >= 0 for r in rows)        # page faults MiB/step
  for r in rows:   # XLA's cost analysis and the roofline under the given peaks.
    gflop, gb = map(float, r[15].split(','))
    bound, fraction = float(r[16].split()[0]), float(r[16].split()[1].strip('(,'))
    assert 0 < gflop and 0 < gb
    assert bound == pytest.approx(1 / max(gflop / 1e3, gb / 10), rel=0.01)
    assert fraction == pytest.approx(float(r[6]) / bound, rel=0.01, abs=1e-3)
  train_gflop, infer_gflop = (float(r[15].split(',')[0]) for r in rows)
  assert 2 < train_gflop / infer_gflop < 4          # backward ≈ twice the forward FLOPs
  if TIMM_INSTALLED:   # The headline: ours over the fastest peer configuration.
    ratio, peer = by_name['train', 'tiny'][7].split()
    assert peer == 'timm' and float(ratio.strip('*×')) == pytest.approx(
        float(by_name['train', 'tiny'][6]) / float(by_name['train', 'timm'][6]), rel=0.01)
  # One profiled step per variant and mode: per-operation times and the compiled HLO.
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      f'xception_{mode}_b2_{name}.{kind}' for mode in ('train', 'infer')
      for name in ('tiny', 'tiny-2') for kind in ('ops.json', 'hlo.txt.gz'))
  tracks = json.loads((tmp_path / 'xception_train_b2_tiny.ops.json').read_text())
  timed_ops = {name for rows in tracks.values() for name, us, count in rows if us > 0}
  with gzip.open(tmp_path / 'xception_train_b2_tiny.hlo.txt.gz', 'rt') as f:
    hlo = f.read()
  assert hlo.startswith('HloModule')
  fusions = set(re.findall(r'%(\S*fusion\S*) = ', hlo))
  assert timed_ops & fusions                         # the profile names the HLO's operations


def test_the_timed_steps_are_the_trainers_own(monkeypatch):
  """The benchmark times the jitted function the training loop calls and the evaluator's
  step, with their state, not a re-implementation."""
  from helpers import tiny_config
  from xception_jax.trainer import evaluate, timing, train
  built, evaluators = [], []
  train_steps, evaluator_init = train.Setup.train_steps, evaluate.Evaluator.__init__
  monkeypatch.setattr(train.Setup, 'train_steps', lambda self, abstract, n: (
      built.append(train_steps(self, abstract, n)), built[-1])[1])
  monkeypatch.setattr(evaluate.Evaluator, '__init__', lambda self, *args, **kwargs: (
      evaluators.append(self), evaluator_init(self, *args, **kwargs))[1])
  config = tiny_config(batch_size=2)
  timed = timing.training_step(config, steps_per_call=2)
  assert timed.function is built[0] and (timed.steps_per_call, timed.batch_size) == (2, 2)
  timed.run()
  timed.run()   # The state is donated and carried from call to call.
  evaluated = timing.eval_step(config)
  assert evaluated.function is evaluators[0].step
  evaluated.run()


@pytest.mark.long(seconds=10)
def test_variant_options_named_xla_are_the_configs_compiler_options():
  tiny = 'width_multiplier=0.25,middle_flow_repeats=0'
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.throughput', '--model=xception', '--batch=2',
       '--image-size=71', '--mode=infer', '--warmup=0', '--repeats=1', '--peers=', '--no-record',
       f'--ours=bad:{tiny},xla_no_such_option=True',
       f'--ours=concurrent:{tiny},xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED'],
      cwd=ROOT, capture_output=True, text=True, check=True, env=environment(devices=1))
  # The option reached XLA's compiler through the config's compiler_options (not the model,
  # which would reject the keyword).
  assert "bad xception failed (exit 1)" in proc.stderr
  assert "No such compile option: 'xla_no_such_option'" in proc.stderr
  rows = [line.split('|') for line in proc.stdout.splitlines() if line.startswith('| xception')]
  assert [r[5].strip() for r in rows] == ['concurrent'] and float(rows[0][6]) > 0


def test_device_ceilings_prints_the_roofline_flags():
  out = run('benchmarks.device_ceilings', '--matmul=128', '--copy-mib=4', '--repeats=2')
  flags = out.splitlines()[-1].split()
  assert [f.split('=')[0] for f in flags] == ['--peak-tflops', '--peak-tbps']
  assert all(float(f.split('=')[1]) > 0 for f in flags)


def test_roofline_is_the_slower_bound_and_peaks_follow_the_device():
  from benchmarks import throughput
  assert throughput.device_peaks('NVIDIA H100 80GB HBM3', 'bfloat16') == (989.0, 3.35)
  assert throughput.device_peaks('NVIDIA H200', 'float32') == (494.5, 4.8)   # TF32.
  assert throughput.device_peaks('cpu', 'float32') is None
  assert throughput.device_peaks('cpu', 'float32', 2.0, 0.5) == (2.0, 0.5)
  # Xception's training step is about 50 GFLOP per image; at 1.4 GB it is memory-bound.
  bound, binding = throughput.roofline(50.0, 1.4, (989.0, 3.35))
  assert binding == 'memory' and bound == pytest.approx(3350 / 1.4)
  bound, binding = throughput.roofline(50.0, 0.001, (989.0, 3.35))
  assert binding == 'compute' and bound == pytest.approx(989e3 / 50)


def test_operation_times_span_asynchronous_operations_to_their_end_marker():
  """A profile's per-operation times: an operation XLA ran asynchronously (its event is the
  launch, an 'end: NAME' event its completion) counts from launch to completion."""
  from benchmarks import throughput

  def op(name, ts, dur, tid, hlo_op=True):
    return dict(ph='X', name=name, ts=ts, dur=dur, pid=1, tid=tid,
                args={'hlo_op': name} if hlo_op else {})
  events = [
      dict(ph='M', name='process_name', pid=1, args={'name': '/host:CPU'}),
      dict(ph='M', name='thread_name', pid=1, tid=10, args={'name': 'w0'}),
      dict(ph='M', name='thread_name', pid=1, tid=11, args={'name': 'w1'}),
      op('ThunkExecutor::Execute', 0, 300, 10, hlo_op=False),
      op('end: convolution.1', 90, 1, 11, hlo_op=False),    # before the launch: not its end
      op('convolution.1', 100, 5, 10),                       # launched, completes on w1
      op('add_fusion', 110, 20, 10),
      op('end: convolution.1', 150, 2, 11, hlo_op=False),
      op('add_fusion', 200, 10, 11),
      op('end: add_fusion', 210, 0.5, 11, hlo_op=False),     # a synchronous one's marker
      op('copy.3', 220, 4, 11),                              # no marker: its own time
  ]
  assert throughput.operation_times(events) == {
      '/host:CPU/w0': [['ThunkExecutor::Execute', 300, 1], ['convolution.1', 52, 1],
                       ['add_fusion', 20, 1]],
      '/host:CPU/w1': [['add_fusion', 10.5, 1], ['copy.3', 4, 1]]}


def test_env_settings_are_parsed_recorded_and_checked(monkeypatch):
  from benchmarks import throughput
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_a=true')
  env = throughput.parse_env(['GLIBC_TUNABLES=glibc.malloc.hugetlb=1', 'OMP_NUM_THREADS=2'])
  assert env == {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1', 'OMP_NUM_THREADS': '2'}
  assert throughput.tuning_environment(env) == (
      'XLA_FLAGS=--xla_cpu_a=true GLIBC_TUNABLES=glibc.malloc.hugetlb=1 OMP_NUM_THREADS=2')
  # --env may override the workers' own settings (2026-11-28 it raised TypeError instead).
  worker = throughput.worker_environment({'TF_CPP_MIN_LOG_LEVEL': '0'}, '--xla_cpu_b=false')
  assert (worker['TF_CPP_MIN_LOG_LEVEL'], worker['KERAS_BACKEND']) == ('0', 'jax')
  assert worker['XLA_FLAGS'] == '--xla_cpu_a=true --xla_cpu_b=false'
  assert throughput.worker_environment({})['TF_CPP_MIN_LOG_LEVEL'] == '3'
  bad = subprocess.run([sys.executable, '-m', 'benchmarks.throughput', '--env=hugetlb'],
                       cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode == 2 and "--env takes NAME=VALUE, got 'hugetlb'" in bad.stderr


@pytest.mark.long(seconds=10)
def test_as_main_job_starts_ours_with_the_main_jobs_allocator():
  """Ours restarts itself as `python -m xception_jax.main` does, with what it adds to this
  environment (on a CPU host the kept heap), and says so."""
  from xception_jax.trainer import host_memory
  env = environment(devices=1)
  for name in ('GLIBC_TUNABLES', 'LD_PRELOAD', host_memory.SWITCH, host_memory.ADDED_MARK):
    env.pop(name, None)
  added, why = host_memory.allocator_environment(
      env, host_memory.glibc_version(), host_memory.thp_mode(),
      host_memory.accelerator_devices())
  mark = added and added[host_memory.ADDED_MARK]
  inline = ', computations on the calling thread' if mark and 'mmap_max=0' in mark else ''
  want = f'on: {mark} added by xception_jax{inline}' if added else why
  done = subprocess.run([sys.executable, '-m', 'benchmarks.throughput', '--model=xception',
                         '--batch=2', '--image-size=71', '--mode=infer', '--warmup=0',
                         '--repeats=1', '--peers=', '--no-record', '--as-main-job',
                         f'--ours=tiny:{XLA_FORMS}'],
                        cwd=ROOT, capture_output=True, text=True, check=True, env=env)
  assert f"ours' malloc, as the main job's: {want}\n" in done.stderr
  assert [line.split('|')[5].strip() for line in done.stdout.splitlines()
          if line.startswith('| xception')] == ['tiny']
  bad = subprocess.run([sys.executable, '-m', 'benchmarks.throughput', '--as-main-job',
                        f'--env={host_memory.SWITCH}=jemalloc'],
                       cwd=ROOT, capture_output=True, text=True, env=env)
  assert bad.returncode == 2 and bad.stderr.splitlines()[-1].endswith(
      f"error: {host_memory.SWITCH}='jemalloc': use one of auto, tcmalloc, huge-pages, system.")


@pytest.mark.long(seconds=9)
def test_input_pipeline_appends_a_section(tmp_path):
  results = tmp_path / 'RESULTS.md'
  run('benchmarks.input_pipeline', '--images=8', '--image_size=75', '--batch=4', '--repeats=1',
      f'--results={results}')
  text = results.read_text()
  assert text.count('## ') == 1 and '- command: `python -m benchmarks.input_pipeline' in text
  row = text.strip().splitlines()[-1].split('|')
  assert float(row[-2]) > 0                           # images/s per thread


def test_conv_forms_appends_a_row_per_shape(tmp_path):
  results = tmp_path / 'RESULTS.md'
  out = run('benchmarks.conv_forms', '--batch=1', '--repeats=1', '--limit=2',
            f'--results={results}')
  rows = [line.split('|') for line in out.splitlines() if line.startswith('| 1×')]
  assert [r[1].strip() for r in rows] == ['1×299×299×3', '1×149×149×32']
  assert 'oneDNN, compiler_options() ms' in out
  assert all(float(t) > 0 for r in rows for t in r[5:10])   # five forms, ms
  for r in rows:   # PyTorch's time where it is installed, and the rate of XLA's conv.
    peer, rates = r[10].strip(), r[11].split('/')
    assert peer == '—' or float(peer) > 0
    assert float(rates[0]) > 0 and len(rates) == (1 if peer == '—' else 2)
  assert results.read_text().count('| 1×') == 2


@pytest.mark.long(seconds=10)
def test_model_convs_times_every_conv_of_the_model(tmp_path):
  results = tmp_path / 'RESULTS.md'
  out = run('benchmarks.model_convs', '--model=xception', '--batch=1', '--image-size=71',
            '--repeats=1', '--option=width_multiplier=0.25', '--option=middle_flow_repeats=0',
            f'--results={results}')
  rows = [line.split('|')[1:-1] for line in out.splitlines() if re.match(r'\| \d', line)]
  geometries, total = rows[:-1], rows[-1]
  # Figure 5 without its middle flow: 2 stem convs, 4 shortcut 1×1 convs and 10 separable
  # convs, each a depthwise and a 1×1 conv.
  assert int(total[0]) == sum(int(r[0]) for r in geometries) == 26
  assert sum(int(r[0]) for r in geometries if int(r[5]) > 1) == 10
  # The stem's first conv: 3×3, stride 2, unpadded, 32 × 0.25 filters, on the image.
  stem = ['1', '1×71×71×3', '3×3×3×8', '2,2', '0,0,0,0', '1']
  assert stem in [[c.strip() for c in r[:6]] for r in geometries]
  assert all(float(r[7]) > 0 for r in geometries)   # ours, ms
  assert all(r[6].strip() == '—' or float(r[6]) > 0 for r in geometries)   # PyTorch, ms
  recorded = re.findall(r'^\| \d+ \| 1×', results.read_text(), flags=re.MULTILINE)
  assert len(recorded) == len(geometries)


def test_model_convs_refuses_an_unknown_option_in_one_line():
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.model_convs', '--option=bogus=1'],
                        cwd=ROOT, capture_output=True, text=True, env=environment(devices=1))
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith(
      'model_convs.py: error: xception has no option(s) bogus; valid options:')
  assert 'Traceback' not in proc.stderr
