"""The benchmark commands run end to end and record what they measured (no timing asserted)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, capture_output=True, text=True,
                        check=True).stdout


def test_throughput_prints_a_row_per_variant():
  out = run('benchmarks.throughput', '--model=xception', '--batch=2', '--image-size=71',
            '--mode=train,infer', '--warmup=0', '--repeats=1', '--peers=', '--no-record',
            '--env=GLIBC_TUNABLES=glibc.malloc.hugetlb=1',
            '--ours=tiny:width_multiplier=0.25,middle_flow_repeats=0',
            '--ours=tiny-bn:width_multiplier=0.25,middle_flow_repeats=0,norm_impl="xla"')
  rows = [line.split('|') for line in out.splitlines() if line.startswith('| xception')]
  assert [(r[3].strip(), r[5].strip()) for r in rows] == [
      ('train', 'tiny'), ('train', 'tiny-bn'), ('infer', 'tiny'), ('infer', 'tiny-bn')]
  assert all(float(r[6]) > 0 for r in rows)          # images/s
  assert all(float(r[11]) >= 0 for r in rows)        # page faults MiB/step


def test_env_settings_are_parsed_recorded_and_checked(monkeypatch):
  from benchmarks import throughput
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_a=true')
  env = throughput.parse_env(['GLIBC_TUNABLES=glibc.malloc.hugetlb=1', 'OMP_NUM_THREADS=2'])
  assert env == {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1', 'OMP_NUM_THREADS': '2'}
  assert throughput.tuning_environment(env) == (
      'XLA_FLAGS=--xla_cpu_a=true GLIBC_TUNABLES=glibc.malloc.hugetlb=1 OMP_NUM_THREADS=2')
  bad = subprocess.run([sys.executable, '-m', 'benchmarks.throughput', '--env=hugetlb'],
                       cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode == 2 and "--env takes NAME=VALUE, got 'hugetlb'" in bad.stderr


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
  assert all(float(t) > 0 for r in rows for t in r[5:9])   # four forms, ms
  assert results.read_text().count('| 1×') == 2
