"""Measure the study's runs and the test command the way the README states them, and write what was measured to
benchmarks/results/<name>.json (committed; `tools/make_readme.py` reads the README's timing figures from there).

    python tools/record.py run --profile cpu     # the main job: a fresh run folder and an empty call and model cache
    python tools/record.py run --profile smoke   # the smoke run of all nine stages
    python tools/record.py tests                 # the test command from a fresh clone of HEAD with empty caches

`run` executes `culturellm run --profile P` into a new temporary folder with $CULTURELLM_CACHE pointing at a new empty
folder (so every model call is made and the packaged models are converted again) and records the run's wall time,
every task's seconds and peak memory from its manifest, and the machine. `tests` clones HEAD into a temporary folder
and runs `CI=true bash .ci/run` there with an empty $CULTURELLM_CACHE (the venv is built anew; pip's download cache is
the machine's), and records its wall time and pytest's counts. The study data come from $CULTURELLM_DATA, else
../shared/data beside the checkout.
"""
from __future__ import annotations

import argparse, json, os, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / 'benchmarks' / 'results'


sys.path.insert(0, str(REPO / 'benchmarks'))
from scoring import data_root as _data_root, write_results  # noqa: E402  (one rule for the data root, one results writer)


def data_root() -> str | None:
    "The study data root (the benchmarks' and the package's rule), if it holds the data."
    d = _data_root()
    return str(d) if (d / 'culturellm').is_dir() else None


def git_head() -> str:
    return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True, text=True).stdout.strip()


def write(name: str, res: dict) -> Path:
    p = write_results(name, dict(res, commit=git_head()))
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


def _ci(v, lo, hi, sign=False, digits=2) -> str:
    "'+0.69 [0.31, 0.94]'; without an interval (fewer than two independent units: NaN bounds) '+0.69 (no interval)'."
    f = (lambda x: f'{x:+.{digits}f}'.replace('-', '−')) if sign else (lambda x: f'{x:.{digits}f}')
    if lo != lo or hi != hi: return f'{f(v)} (no interval)'
    return f'{f(v)} [{f(lo)}, {f(hi)}]'.replace('[+', '[').replace(', +', ', ')


def study_figures(run: Path) -> dict:
    "The figures the README quotes from a cpu run's results files (each a short text), computed, not typed."
    import pandas as pd
    R, out = run / 'results', {}
    def csv(name): return pd.read_csv(R / name) if (R / name).exists() else None
    q = csv('augment_quality.csv')
    if q is not None:
        q = q.set_index(q.columns[0])
        out['augment.kept'] = f"{int(q.loc['ours', 'records'])} questions over {int(q.loc['ours', 'seeds'])} seeds"
        out['augment.sim'] = f"{q.loc['ours', 'sim_seed_mean']:.2f}"
        if 'original release' in q.index: out['augment.sim_release'] = f"{q.loc['original release', 'sim_seed_mean']:.2f}"
        if 'anchor: identical' in q.index:
            out['augment.judge'] = f"{q.loc['anchor: identical', 'judge_expected']:.2f} vs {q.loc['anchor: unrelated', 'judge_expected']:.2f}"
    for f in sorted(R.glob('finetune_agreement_*.json')):
        for r in json.loads(f.read_text()):
            if r['split'] != 'held-out' or r['model'] == 'base': continue
            key = f"finetune.{r['culture']}.{ {'One': 'one', 'tuned-dist': 'tuned_dist', 'One-dist': 'one_dist'}.get(r['model'], 'tuned')}"
            out[key] = _ci(r['diff'], r['diff_low'], r['diff_high'], sign=True)
            out[f"finetune.{r['culture']}.heldout"] = f"{r['n']} held-out wordings of {r['questions']} seed questions"
    sc = csv('scores.csv')
    if sc is not None:
        f1 = sc[(sc.metric == 'macro_f1') & ~sc.task.str.startswith('WVS')]
        beat = f1.groupby(['culture', 'task']).apply(lambda g: bool((g.value > g.majority_baseline).any()), include_groups=False)
        out['evaluate.tasks'] = f'{int((~beat).sum())} of {len(beat)}'
        w = sc[(sc.metric == 'wvs_1-jsd') & (sc.task == 'WVS: held-out paraphrases') & (sc.culture == 'arabic')].set_index('model').value
        for m, k in (('base', 'base'), ('arabic', 'tuned'), ('One', 'one'), ('arabic-dist', 'tuned_dist'), ('One-dist', 'one_dist'),
                     ('all-countries average', 'average'), ('uniform', 'uniform')):
            if m in w: out[f'evaluate.arabic_heldout.{k}'] = f'{w[m]:.2f}'
        splits = {'trained': 'WVS: seed questions (trained)', 'heldout': 'WVS: held-out paraphrases'}
        splits.update({'topic': t for t in dict.fromkeys(sc.task) if str(t).startswith('WVS: held-out topic')})
        for c in ('arabic', 'english'):             # trained on the survey's distribution vs on one answer per question
            for k, split in splits.items():
                g = sc[(sc.culture == c) & (sc.task == split)]
                d = g[(g.metric == 'wvs_1-jsd_dist_vs_majority') & (g.model == f'{c}-dist')]
                if not len(d): continue
                out[f'dist.{c}.{k}.diff'] = _ci(d.value.iloc[0], d.ci_low.iloc[0], d.ci_high.iloc[0], sign=True, digits=3)
                out[f'dist.{c}.{k}.n'] = str(int(d.n.iloc[0]))
                w = g[g.metric == 'wvs_1-jsd'].set_index('model').value
                for m, kk in (('base', 'base'), (c, 'majority'), (f'{c}-dist', 'dist'), ('uniform', 'uniform'), ('all-countries average', 'average')):
                    if m in w: out[f'dist.{c}.{k}.{kk}'] = f'{w[m]:.3f}'
            if 'topic' in splits: out['dist.topic'] = splits['topic'].removeprefix('WVS: held-out topic: ')
    for c in ('arabic', 'english', 'one'):
        a = csv(f'ablation_summary_{c}.csv')
        if a is None: continue
        m = a.pivot_table(index='setting', columns='measure', values='mean')
        al = m['wvs_alignment']
        out[f'ablation.{c}.base'] = f"{al['base']:.2f}"
        for s in ('wvs', 'wvs_a', 'wvs_ab', 'wvs_local_en', 'wvs_local'):
            if s in al: out[f'ablation.{c}.{s}'] = f'{al[s]:.2f}'
        tuned = [al[s] for s in ('wvs', 'wvs_a', 'wvs_ab') if s in al]
        out[f'ablation.{c}.range'] = f'{min(tuned):.2f}–{max(tuned):.2f}'
        f1 = m['macro_f1']
        out[f'ablation.{c}.f1_base'] = f"{f1['base']:.2f}"
        out[f'ablation.{c}.f1_range'] = f"{min(f1[s] for s in ('wvs', 'wvs_a', 'wvs_ab')):.2f}–{max(f1[s] for s in ('wvs', 'wvs_a', 'wvs_ab')):.2f}"
        sd = a.pivot_table(index='setting', columns='measure', values='sd')['wvs_alignment']
        out[f'ablation.{c}.variants'] = ' / '.join(f'{al[s]:.2f} ± {sd[s]:.2f}' for s in ('wvs', 'wvs_a', 'wvs_ab'))
        if 'wvs_local' in al: out[f'ablation.{c}.local_sd'] = f"{al['wvs_local_en']:.2f} ± {sd['wvs_local_en']:.2f} vs {al['wvs_local']:.2f} ± {sd['wvs_local']:.2f}"
        if 'agreement' in m:
            ag = m['agreement']
            out[f'ablation.{c}.agree'] = f"{ag['base']:.2f} → {min(ag[s] for s in ('wvs', 'wvs_a', 'wvs_ab')):.2f}–{max(ag[s] for s in ('wvs', 'wvs_a', 'wvs_ab')):.2f}"
            if 'wvs_local' in ag: out[f'ablation.{c}.local_agree'] = f"{ag['wvs_local_en']:.2f} vs {ag['wvs_local']:.2f}"
        if 'context' in f1: out[f'ablation.{c}.f1_context'] = f"{f1['context']:.2f}"
        w = csv(f'winrate_{c}.csv')
        if w is not None and len(w): out[f'ablation.{c}.ties'] = f'{w.tie.mean():.0%}'
    s = csv('scaling.csv')
    if s is not None:
        s = s[s.measure == 'wvs_alignment']
        for c, g in s.groupby('culture'):
            base = g[g.setting == 'base'].value.iloc[0]
            t = g[g.setting != 'base'].set_index('size').value
            out[f'scaling.{c}'] = f"{base:.2f} base → {t.iloc[0]:.2f} with the seeds alone, {t.iloc[-1]:.2f} with all {t.index[-1]} augmented questions"
            b, tt = g[g.setting == 'base'].iloc[0], g[g.setting != 'base'].set_index('size')
            out[f'scaling.{c}.base'] = _ci(b.value, b.lo, b.hi)
            out[f'scaling.{c}.seeds'] = _ci(tt.value.iloc[0], tt.lo.iloc[0], tt.hi.iloc[0])
            out[f'scaling.{c}.more'] = ' and '.join(f'{v:.2f} ({k})' for k, v in tt.value.iloc[1:].items())
            out['scaling.sizes'] = ', '.join(map(str, tt.index))
            out['scaling.available'] = str(tt.index[-1])
    t = csv('gallery_translation.csv')
    if t is not None and len(t):
        r = t.iloc[0]
        out['gallery.translation'] = f"round-trip {r.qe_mean:.2f}; {int(r.dropped)} of {int(r.n)} instructions dropped"
    g = csv('gallery_geomlama_scores.csv')
    if g is not None: out['gallery.geomlama_above_random'] = str(int((g.gap_low > 0).sum()))
    return out


def record_run(run: Path, wall: float, name: str | None = None) -> Path:
    "Write a run's results file: its wall time, per-stage seconds and peak memory, and (cpu) the study figures the docs quote."
    m = json.loads((run / 'manifest.json').read_text())
    res = dict(profile=m['profile'], cultures=m['cultures'], data_root=bool(m.get('data_root')),
               caches='empty call and model cache, new run folder', wall_seconds=round(wall, 1), **summarise_run(m))
    if m['profile'] == 'cpu': res['study'] = study_figures(run)
    return write(name or {'cpu': 'main_job', 'smoke': 'smoke_run'}.get(m['profile'], f"run_{m['profile']}"), res)


def cmd_run(a):
    if a.from_dir:                                   # a run already made into an empty folder with an empty cache
        d = Path(a.from_dir)
        record_run(d, json.loads((d / 'manifest.json').read_text())['wall_seconds'], a.name); return
    out = Path(tempfile.mkdtemp(prefix=f'culturellm-{a.profile}-'))
    cache = Path(tempfile.mkdtemp(prefix='culturellm-cache-'))
    env = dict(os.environ, CULTURELLM_CACHE=str(cache))
    if data_root(): env['CULTURELLM_DATA'] = data_root()
    cli = REPO / '.venv' / 'bin' / 'culturellm'
    cmd = [str(cli) if cli.exists() else 'culturellm', 'run', '--profile', a.profile, '--out', str(out / 'run')] + a.extra
    print(' '.join(cmd), flush=True)
    t0 = time.perf_counter(); rc = subprocess.run(cmd, env=env).returncode; wall = time.perf_counter() - t0
    if rc: raise SystemExit(f'the run failed (exit {rc}); its folder: {out}')
    record_run(out / 'run', wall, a.name)
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
