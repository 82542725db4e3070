"""Measure the study's runs and the test command the way the README states them, and write what was measured to
benchmarks/results/<name>.json (committed; `tools/make_readme.py` reads the README's timing figures from there).

    python tools/record.py run --profile cpu     # the main job: a fresh run folder and an empty call and model cache
    python tools/record.py run --profile smoke   # the smoke run of all eight stages
    python tools/record.py tests                 # the test command from a fresh clone of HEAD with empty caches

`run` executes `culturellm run --profile P` into a new temporary folder with $CULTURELLM_CACHE pointing at a new empty
folder (so every model call is made and the packaged models are converted again) and records the run's wall time,
every task's seconds and peak memory from its manifest, and the machine. `tests` clones HEAD into a temporary folder
and runs `CI=true bash .ci/run` there with an empty $CULTURELLM_CACHE (the venv is built anew; pip's download cache is
the machine's), and records its wall time and pytest's counts. The study data come from $CULTURELLM_DATA, else
../shared/data beside the checkout.
"""
from __future__ import annotations

import argparse, json, os, platform, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / 'benchmarks' / 'results'


def machine() -> dict:
    "Processor, cores and the CPU's vector flags."
    flags = []
    try: flags = next(l.split(':', 1)[1].split() for l in Path('/proc/cpuinfo').read_text().splitlines() if l.startswith('flags'))
    except (OSError, StopIteration): pass
    name = next((l.split(':', 1)[1].strip() for l in Path('/proc/cpuinfo').read_text().splitlines() if l.startswith('model name')), None) \
        if Path('/proc/cpuinfo').exists() else None
    return dict(processor=name or platform.processor() or platform.machine(), cores=os.cpu_count(),
                cpu_flags=[f for f in flags if f.startswith(('avx512_bf16', 'amx', 'avx512f', 'avx2'))])


def data_root() -> str | None:
    d = os.environ.get('CULTURELLM_DATA') or (REPO.parent / 'shared' / 'data')
    return str(d) if Path(d, 'culturellm').is_dir() else None


def git_head() -> str:
    return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True, text=True).stdout.strip()


def write(name: str, res: dict) -> Path:
    p = RESULTS / f'{name}.json'
    p.parent.mkdir(exist_ok=True)
    p.write_text(json.dumps(dict(res, machine=machine(), commit=git_head(), when=time.strftime('%Y-%m-%d')), indent=1) + '\n')
    print(f'wrote {p.relative_to(REPO)}')
    return p


def summarise_run(manifest: dict) -> dict:
    "Per-stage seconds and peak memory (the largest task's) from a run's manifest; every task must have run in its last invocation."
    tasks = manifest['stages']
    stale = sorted(set(tasks) - set(manifest.get('last_run', [])))
    if stale: raise SystemExit(f'the run reused {len(stale)} task(s) ({", ".join(stale[:3])} ...): record a run from an empty folder')
    bad = [k for k, t in tasks.items() if t['status'] != 'ok']
    if bad: raise SystemExit(f'task(s) not ok: {", ".join(bad)}')
    stages = {}
    for t in tasks.values():
        s = stages.setdefault(t['stage'], dict(seconds=0.0, peak_rss_mb=0.0, tasks=0))
        s['seconds'] += t['seconds']; s['tasks'] += 1
        s['peak_rss_mb'] = max(s['peak_rss_mb'], t.get('peak_rss_mb') or 0.0)
    return dict(tasks=len(tasks), stages=stages, peak_rss_mb=max(s['peak_rss_mb'] for s in stages.values()),
                task_seconds=sum(s['seconds'] for s in stages.values()))


def cmd_run(a):
    if a.from_dir:                                   # a run already made into an empty folder with an empty cache
        m = json.loads((Path(a.from_dir) / 'manifest.json').read_text())
        res = dict(profile=m['profile'], cultures=m['cultures'], data_root=bool(m.get('data_root')),
                   caches='empty call and model cache, new run folder', wall_seconds=m['wall_seconds'], **summarise_run(m))
        write(a.name or {'cpu': 'main_job', 'smoke': 'smoke_run'}.get(m['profile'], f"run_{m['profile']}"), res)
        return
    out = Path(tempfile.mkdtemp(prefix=f'culturellm-{a.profile}-'))
    cache = Path(tempfile.mkdtemp(prefix='culturellm-cache-'))
    env = dict(os.environ, CULTURELLM_CACHE=str(cache))
    if data_root(): env['CULTURELLM_DATA'] = data_root()
    cli = REPO / '.venv' / 'bin' / 'culturellm'
    cmd = [str(cli) if cli.exists() else 'culturellm', 'run', '--profile', a.profile, '--out', str(out / 'run')] + a.extra
    print(' '.join(cmd), flush=True)
    t0 = time.perf_counter(); rc = subprocess.run(cmd, env=env).returncode; wall = time.perf_counter() - t0
    if rc: raise SystemExit(f'the run failed (exit {rc}); its folder: {out}')
    m = json.loads((out / 'run' / 'manifest.json').read_text())
    res = dict(profile=a.profile, cultures=m['cultures'], data_root=bool(data_root()), caches='empty call and model cache, new run folder',
               wall_seconds=round(wall, 1), **summarise_run(m))
    write(a.name or {'cpu': 'main_job', 'smoke': 'smoke_run'}.get(a.profile, f'run_{a.profile}'), res)
    if not a.keep: shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)


def pytest_counts(text: str) -> dict:
    "passed / failed / skipped / errors from pytest's last summary line."
    line = [l for l in text.splitlines() if re.search(r'\d+ (passed|failed)', l)]
    if not line: return {}
    return {k: int(n) for n, k in re.findall(r'(\d+) (passed|failed|skipped|errors?)', line[-1])}


def cmd_tests(a):
    tmp = Path(tempfile.mkdtemp(prefix='culturellm-tests-'))
    clone = tmp / 'clone'; cache = tmp / 'cache'; cache.mkdir()
    subprocess.run(['git', 'clone', '-q', str(REPO), str(clone)], check=True)
    env = dict(os.environ, CI='true', CULTURELLM_CACHE=str(cache))
    if data_root(): env['CULTURELLM_DATA'] = data_root()
    env.pop('VIRTUAL_ENV', None)
    print(f'CI=true bash .ci/run in a fresh clone of {git_head()} ({clone})', flush=True)
    t0 = time.perf_counter()
    p = subprocess.run(['bash', '.ci/run'], cwd=clone, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (tmp / 'ci.log').write_text(p.stdout + p.stderr)
    counts = pytest_counts(p.stdout)
    print(p.stdout[-1500:])
    if p.returncode: raise SystemExit(f'the test command failed (exit {p.returncode}); its log: {tmp / "ci.log"}')
    write('tests', dict(command='CI=true bash .ci/run', wall_seconds=round(wall, 1), counts=counts,
                        caches='fresh clone, new venv, empty call and model cache (pip download cache warm)'))
    shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    r = sub.add_parser('run', help='a study run into a new folder with empty caches')
    r.add_argument('--profile', default='cpu')
    r.add_argument('--name', default=None, help='results file name (default main_job for cpu, smoke_run for smoke)')
    r.add_argument('--keep', action='store_true', help='keep the run folder')
    r.add_argument('--from', dest='from_dir', default=None, help='record a run folder already made (from an empty folder, with an empty cache) instead of running')
    r.add_argument('extra', nargs='*', help='more `culturellm run` arguments (after --)')
    sub.add_parser('tests', help='the test command from a fresh clone with empty caches')
    a = ap.parse_args(argv)
    {'run': cmd_run, 'tests': cmd_tests}[a.cmd](a)


if __name__ == '__main__': main()
