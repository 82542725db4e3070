"""Write README.md from nbs/index.ipynb (the docs home page), or with --check fail if it is out of date.

nbdev_readme does this through Quarto, which is not installable from the package registries here; this
script keeps the same contract: the notebook is the source, README.md is generated.

Measured figures are never typed: the notebook marks each one as `<!--fact:NAME-->value<!--/fact-->` (the markers are
invisible on the docs site) and this script fills the value from the files that measured it — benchmarks/results/
finetune.json and scoring.json (the benchmarks), main_job.json, smoke_run.json and tests.json (`tools/record.py`).
It rewrites the values in every notebook under nbs/ (the chapters' 'What came out' quote the main job this way),
then the README; --check fails if any is out of date.
"""
import json, re, sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / 'benchmarks' / 'results'
FACT = re.compile(r'<!--fact:([\w.]+)-->(.*?)<!--/fact-->', re.S)


def dur(s: float) -> str:
    "Seconds as '11 min 40 s' (or '52 s')."
    m, s = divmod(round(s), 60)
    return f'{m} min {s} s' if m else f'{s} s'


def _run_facts(F: dict, key: str, r: dict):
    F[f'{key}.wall'] = dur(r['wall_seconds'])
    F[f'{key}.peak'] = f"{r['peak_rss_mb'] / 1024:.1f} GiB"
    F[f'{key}.stages'] = ', '.join(f"{k} {dur(v['seconds'])}" for k, v in r['stages'].items())
    F[f'{key}.tasks'] = str(r['tasks'])
    F[f'{key}.when'] = f"{r['when']}, commit {r['commit']}"


def facts(results: Path = RESULTS) -> dict:
    "{name: text} of every figure the results files hold."
    R = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob('*.json'))}
    F = {}
    for name, key in (('main_job', 'main'), ('smoke_run', 'smoke'), ('main_job_jobs2', 'main_jobs2')):
        if name in R: _run_facts(F, key, R[name])
    if 'main_job' in R:
        F.update({f'study.{k}': v for k, v in R['main_job'].get('study', {}).items()})
        m = R['main_job']['machine']
        F['machine'] = f"{m['cores']}-core {m['processor']}" + (' with AVX-512 BF16' if 'avx512_bf16' in m['cpu_flags'] else '')
    if 'tests' in R:
        t = R['tests']
        F['tests.wall'] = dur(t['wall_seconds'])
        F['tests.counts'] = ', '.join(f'{n} {k}' for k, n in t['counts'].items())
        F['tests.when'] = f"{t['when']}, commit {t['commit']}"
    if 'finetune' in R:
        f = R['finetune']; md = f['medians']
        F['finetune.ours'], F['finetune.baseline'], F['finetune.chat'] = (f'{md[k]:.0f}' for k in ('ours', 'baseline', 'chat'))
        F['finetune.ratio'] = f"{md['ours'] / md['baseline']:.2f}×"
        F['finetune.chat_ratio'] = f"{md['ours'] / md['chat']:.2f}×"
        F['finetune.peak_fraction'] = f"{f['our_gflops'] / f['peak_gflops']:.0%}"
        F['finetune.setup'] = f"{f['steps']} steps of {f['batch']}, medians of {f['repeats']}"
    if 'scoring' in R:
        s = R['scoring']
        F['scoring.setup'] = f"{s['items']} items, medians of {s['repeats']}"
        F['scoring.headline'] = s['headline']
        for dt, d in s['dtypes'].items():
            F[f'scoring.{dt}.ours'], F[f'scoring.{dt}.baseline'] = f"{d['ours']:.1f}", f"{d['baseline']:.1f}"
            F[f'scoring.{dt}.ratio'] = f"{d['ratio']:.2f}×"
            F[f'scoring.{dt}.diff'] = f"{d['max_abs_diff']:.2g}"
            F[f'scoring.{dt}.agree'] = f"{d['argmax_agree']:.1%}"
            F[f'scoring.{dt}.peak_fraction'] = f"{d['gflops'] / s['peak_gflops'][dt]:.0%}" if dt in s['peak_gflops'] else 'n/a'
    if 'gpu_paper' in R:
        g = R['gpu_paper']; a = g['adapters'][g['culture']]; ev = g['evaluate']['models']
        F['gpu.device'] = g['device']
        F['gpu.when'] = f"{g['when']}, commit {g['commit']}"
        F['gpu.train'] = (f"{a['samples']} samples, {a['steps']} steps of {a['batch_size']} (r {a['r']}, {a['epochs']:g} epochs) in "
                          f"{a['seconds']:.1f} s of training on {a['device']} {a['dtype']}, {a['tokens_per_s']:,.0f} tokens/s")
        F['gpu.finetune_task'] = dur(g['stages'][f"finetune/{g['culture']}"]['seconds'])
        rates = ', '.join(f"{k} {v['items_per_s']:.0f}" for k, v in ev.items())
        F['gpu.evaluate'] = (f"{g['items']:,} items of {g['tasks']} tasks × {len(ev)} models in "
                             f"{dur(g['stages']['evaluate/' + g['culture']]['seconds'])} (items/s: {rates})")
        F['gpu.f1'] = ', '.join(f"{k} {v['mean_macro_f1']:.3f}" for k, v in ev.items())
    return F


def fill(text: str, F: dict, where: str = '') -> str:
    "`text` with every fact marker's value replaced by its figure; an unknown name is an error."
    def sub(m):
        if m.group(1) not in F: sys.exit(f"FAIL: {where}: fact {m.group(1)!r} is in no file of benchmarks/results (known: {', '.join(sorted(F))})")
        return f'<!--fact:{m.group(1)}-->{F[m.group(1)]}<!--/fact-->'
    return FACT.sub(sub, text)


def fill_notebook(nb_path: Path, F: dict) -> bool:
    "Fill the facts in the notebook's markdown cells; True if any changed (the notebook is rewritten then)."
    nb = nbformat.read(nb_path, as_version=4)
    changed = False
    for c in nb.cells:
        if c.cell_type == 'markdown' and '<!--fact:' in c.source:
            new = fill(c.source, F, nb_path.name)
            if new != c.source: c.source, changed = new, True
    if changed: nbformat.write(nb, nb_path)
    return changed


HEADER = "<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->\n\n"


def render(nb_path: Path = REPO / 'nbs' / 'index.ipynb') -> str:
    "Markdown cells verbatim (image paths made relative to the repo root); code cells not marked hide as code blocks."
    nb = nbformat.read(nb_path, as_version=4)
    parts = []
    for c in nb.cells:
        src = c.source.strip()
        if not src: continue
        if c.cell_type == 'markdown':
            parts.append(re.sub(r'\]\((?!https?:|/|#)([^)]+)\)', lambda m: f"](nbs/{m.group(1)})" if (REPO / 'nbs' / m.group(1).split('#')[0]).exists() else m.group(0), src))
        elif c.cell_type == 'code' and not re.search(r'^#\|\s*(hide|default_exp|export)', src, re.M):
            parts.append("```python\n" + src + "\n```")
    return HEADER + "\n\n".join(parts) + "\n"


if __name__ == '__main__':
    F, nbs = facts(), sorted((REPO / 'nbs').glob('*.ipynb'))        # every notebook may quote measured figures
    if '--check' in sys.argv:
        for p in nbs:
            nb = nbformat.read(p, as_version=4)
            if any(c.cell_type == 'markdown' and fill(c.source, F, p.name) != c.source for c in nb.cells):
                sys.exit(f"FAIL: nbs/{p.name} states figures that benchmarks/results no longer holds; run: python tools/make_readme.py")
    else:
        for p in nbs:
            if fill_notebook(p, F): print(f'filled the figures in {p.relative_to(REPO)}')
    text, readme = render(), REPO / 'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            sys.exit("FAIL: README.md is out of date with nbs/index.ipynb; run: python tools/make_readme.py")
    else:
        readme.write_text(text); print(f"wrote {readme}")
