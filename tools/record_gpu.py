"""Record what a GPU check measured (tools/gpu_check.sh: the `paper` profile's finetune and evaluate stages for one
culture on a lent GPU) into benchmarks/results/gpu_paper.json, from the run folder it brought back.

    python tools/record_gpu.py RUN_FOLDER --device "NVIDIA H200" --commit a2c9e5a [--out benchmarks/results/gpu_paper.json]

Every figure comes from the run's own files: the manifest (stage times, peak memory, packages), each adapter's
training.json (steps, tokens, seconds on the device), the evaluate record (items and seconds per model) and
results/scores_<culture>.csv (macro-F1 per task with its interval)."""
import argparse, csv, json, statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def record(run: Path, device: str, commit: str) -> dict:
    m = json.loads((run / 'manifest.json').read_text())
    culture = m['cultures'][0]
    adapters = {}
    for d in sorted((run / 'adapters').iterdir()):
        t = json.loads((d / 'training.json').read_text())
        adapters[d.name] = dict(samples=t['samples'], steps=t['steps'], tokens=t['tokens'], seconds=t['seconds'],
                                tokens_per_s=round(t['tokens'] / t['seconds'], 1), device=t['device']['device'], dtype=t['device']['dtype'],
                                world_size=t.get('world_size', 1), train_loss=round(t['train_loss'], 4),
                                r=t['config']['r'], epochs=t['config']['epochs'], batch_size=t['config']['batch_size'], note=t['device'].get('note'))
    ev = json.loads((run / 'records' / 'evaluate' / f'{culture}.json').read_text())
    items = sum(t['items'] for t in ev['tasks'] if t['status'] == 'ok')
    models = {x['label']: dict(seconds=x['seconds'], items_per_s=round(items / x['seconds'], 1)) for x in ev['models'] if x['status'] == 'ok'}
    with open(run / 'results' / f'scores_{culture}.csv') as f:
        rows = [r for r in csv.DictReader(f) if r['metric'] == 'macro_f1' and r['status'] == 'ok']
    for lab in models:
        mine = [float(r['value']) for r in rows if r['model'] == lab]
        models[lab].update(tasks=len(mine), mean_macro_f1=round(statistics.fmean(mine), 4) if mine else None)
    stages = {k: dict(seconds=v['seconds'], peak_rss_mb=v['peak_rss_mb']) for k, v in m['stages'].items() if k.split('/')[0] in ('finetune', 'evaluate')}
    return dict(device=device, commit=commit, when=m['created'][:10], profile=m['profile'], culture=culture,
                model=json.loads((run / 'config.json').read_text())['finetune']['model'],
                packages={k: m['packages'][k] for k in ('torch', 'transformers', 'peft', 'trl') if k in m['packages']},
                items=items, tasks=len(ev['tasks']), stages=stages, adapters=adapters, evaluate=dict(seconds=ev['seconds'], models=models))


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('run'); ap.add_argument('--device', required=True); ap.add_argument('--commit', required=True)
    ap.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'gpu_paper.json'))
    a = ap.parse_args()
    r = record(Path(a.run), a.device, a.commit)
    Path(a.out).write_text(json.dumps(r, indent=1) + '\n')
    print(json.dumps(r, indent=1))
