"""Training on the survey's answer distribution, end to end: `seeds.answer_rule=distribution` through every stage, and
`finetune.targets=majority,distribution` giving `<culture>-dist` models measured on the three alignment splits."""
import json, os, subprocess, sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def cli(*args):
    return subprocess.run([sys.executable, '-c', 'import sys; from culturellm.run import main; sys.exit(main())', *args],
                          capture_output=True, text=True, cwd=REPO, timeout=900)


def test_distribution_rule_runs_every_stage(tmp_path, data_root):
    "With answers as distributions every stage runs; the adapters train on soft targets; the chat files hold sampled answers."
    out = tmp_path / 'run'
    r = cli('run', '--profile', 'smoke', '--cultures', 'arabic', '--out', str(out), '--set', 'seeds.answer_rule=distribution')
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((out / 'manifest.json').read_text())
    assert {v['status'] for v in m['stages'].values()} == {'ok'} and len(m['stages']) == 11
    for a in ('arabic', 'one', 'arabic-without-migration'):
        assert json.loads((out / 'adapters' / a / 'training.json').read_text())['targets'] == 'distribution'
    seeds = [json.loads(l) for l in (out / 'data' / 'seeds' / 'arabic.jsonl').read_text().splitlines()]
    assert len(seeds) % 5 == 0 and all('dist' not in r for r in seeds)          # finetune.dist_samples answers per question
    trl = [json.loads(l) for l in next((out / 'data' / 'sft').glob('*/arabic.trl.jsonl')).read_text().splitlines()]
    assert all(abs(sum(r['dist'].values()) - 1) < 1e-4 for r in trl)
    s = pd.read_csv(out / 'results' / 'alignment_arabic.csv')
    assert {'WVS: held-out topic: MIGRATION', 'WVS: seed questions (trained)'} <= set(s.task)


def test_both_targets_give_dist_models_on_every_split(tmp_path, data_root):
    "`finetune.targets=majority,distribution`: `arabic` and `arabic-dist` (and One, One-dist) on every WVS split, the held-out topic included, with the paired difference."
    out = tmp_path / 'run'
    r = cli('run', '--profile', 'smoke', '--cultures', 'arabic', '--out', str(out), '--stages', 'seeds,augment,finetune,alignment',
            '--set', 'finetune.targets=majority,distribution')
    assert r.returncode == 0, r.stdout + r.stderr
    s = pd.read_csv(out / 'results' / 'alignment_arabic.csv')
    w = s[s.metric == 'wvs_1-jsd']
    topic = w[w.task == 'WVS: held-out topic: MIGRATION']
    assert {'arabic', 'arabic-dist', 'base', 'uniform', 'all-countries average'} <= set(topic.model)
    assert set(topic[topic.model.isin(['arabic', 'arabic-dist', 'base'])].n) == {8} and topic.ci_unit.eq('seed question').all()
    assert {'arabic', 'arabic-dist', 'One', 'One-dist'} <= set(w[w.task == 'WVS: seed questions (trained)'].model)
    for split, models in (('WVS: seed questions (trained)', {'arabic-dist', 'One-dist'}), ('WVS: held-out topic: MIGRATION', {'arabic-dist'})):
        d = s[(s.task == split) & (s.metric == 'wvs_1-jsd_dist_vs_majority')].set_index('model')
        assert set(d.index) == models and (d.ci_low <= d.value).all() and (d.value <= d.ci_high).all()
        assert set(s[(s.task == split) & (s.metric == 'wvs_wasserstein_dist_vs_majority')].model) == models
    assert (out / 'adapters' / 'arabic-dist-without-migration' / 'adapter_config.json').exists()
    ag = pd.DataFrame(json.loads((out / 'results' / 'finetune_agreement_arabic.json').read_text()))
    assert {'base', 'tuned', 'tuned-dist'} == set(ag.model)
