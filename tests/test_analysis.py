"""The analysis stage: its tables against numbers worked out by hand, the report's tables and reading on small run
folders in every stage's format (and on the real cpu results where this checkout has them), absent parts reported
and not drawn, malformed files stopped with a one-line error, and the notebook run by papermill at smoke."""
import json, re, shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from culturellm.analysis import (AnalysisDataError, PARTS, ablation_table, build_report, load_run, md_table, performance_table,
                                 read_table, scaling_table, values_table, vs_base_table, winrate_table, wvs_table)
from culturellm.config import ConfigError, get_config

REPO = Path(__file__).resolve().parents[1]
CPU_EVAL, CPU_GALLERY = REPO / 'outputs' / 'cpu-eval3', REPO / 'outputs' / 'cpu_gallery'


def _csv(path: Path, rows: list):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def make_run(folder: Path, parts=('scores', 'ablation', 'winrate', 'forgetting', 'scaling', 'translation')) -> Path:
    """A run folder with two cultures, in the formats the stages write (scores as evaluate writes them, the others in the
    contracts of the ablation, scaling and gallery stages). Every number is chosen so that the expected tables are easy
    to work out by hand."""
    res = folder / 'results'; res.mkdir(parents=True, exist_ok=True)
    (folder / 'config.json').write_text(json.dumps(dict(profile='cpu', cultures=['arabic', 'german'], seed=0,
                                                        finetune=dict(model='smollm2-135m-instruct'), evaluate=dict(max_items=40))))
    (folder / 'manifest.json').write_text(json.dumps(dict(git=dict(revision='feedbeef', dirty=True), python='3.11.7',
                                                          packages=dict(pandas='3.1.1'), wall_seconds=99.0, peak_rss_mb=1536.0,
                                                          stages={'evaluate/arabic': dict(stage='evaluate', culture='arabic', status='ok', seconds=30.0, peak_rss_mb=1536.0),
                                                                  'evaluate/german': dict(stage='evaluate', culture='german', status='ok', seconds=20.0, reused=True)})))
    if 'scores' in parts:
        for c, vals in (('arabic', dict(base=[.2, .4, .6], arabic=[.3, .5, .7])), ('german', dict(base=[.5, .5, .5], german=[.4, .6, .8]))):
            rows = []
            for m, vs in vals.items():
                for k, v in enumerate(vs):
                    rows.append(dict(culture=c, model=m, task=f'{["offensive", "hate", "spam"][k]}_detect', metric='macro_f1', value=v, ci_low=v - .1,
                                     ci_high=v + .1, ci_unit='item', n=40, majority_baseline=.45, random_baseline=.5, ceiling=1.0, p_value=None, status='ok',
                                     text_source=f'{["offensive", "hate", "spam"][k]}_detect'))
                    if m != 'base':
                        d = v - vals['base'][k]
                        rows.append(dict(culture=c, model=m, task=f'{["offensive", "hate", "spam"][k]}_detect', metric='macro_f1_vs_base', value=d,
                                         ci_low=d - .05, ci_high=d + .05, ci_unit='item', n=40, status='ok'))
            for m, v in ((c, .6), ('base', .5), ('uniform', .7), ('all-countries average', .8)):
                rows.append(dict(culture=c, model=m, task='WVS: seed questions (trained)', metric='wvs_1-jsd', value=v, ci_low=v - .02, ci_high=v + .02, ci_unit='seed question', n=50, status='ok'))
            rows.append(dict(culture=c, model=c, task='WVS: seed questions (trained)', metric='wvs_1-jsd_vs_base', value=.1, ci_low=.05, ci_high=.15, ci_unit='seed question', n=50, status='ok'))
            _csv(res / f'scores_{c}.csv', rows)
    if 'ablation' in parts:
        for c in ('arabic', 'german'):
            _csv(res / f'ablation_{c}.csv', [dict(culture=c, setting=s, seed=sd, measure='macro_f1_mean', task='all', score=v, lo=v - .1, hi=v + .1, n=100, model='m', ci_unit='item')
                                             for s, sd, v in (('base', 0, .30), ('wvs', 0, .40), ('wvs', 1, .50), ('wvs', 2, .60), ('wvs_ab', 0, .45), ('wvs_ab_local', 0, .35))])
        _csv(res / 'ablation_summary_german.csv', [dict(culture='german', setting='wvs', measure='macro_f1_mean', mean=.5, sd=.1, n_seeds=3, lo=.4, hi=.6)])
    if 'winrate' in parts:
        _csv(res / 'winrate_arabic.csv', [dict(culture='arabic', model='arabic', judge='j', n=20, win=12, tie=2, loss=6, win_lo=.4, win_hi=.8, loss_lo=.1, loss_hi=.5, ci_unit='seed question')])
        _csv(res / 'winrate_pairs_arabic.csv', [dict(question='q', outcome='win')])   # the per-question verdicts: another kind of file
    if 'forgetting' in parts:
        _csv(res / 'forgetting_arabic.csv', [dict(culture='arabic', model=m, benchmark='mmlu', n=50, accuracy=a, lo=a - .1, hi=a + .1) for m, a in (('base', .3), ('arabic', .28))])
    if 'scaling' in parts:
        _csv(res / 'scaling.csv', [dict(culture='arabic', size=s, seed=sd, measure='perplexity', value=v, lo=v - 1, hi=v + 1, n=30, model='m', ci_unit='item')
                                   for s, sd, v in ((0, 0, 20.0), (50, 0, 16.0), (50, 1, 18.0), (200, 0, 12.0))])
    if 'translation' in parts:
        _csv(res / 'gallery_translation.csv', [dict(language='zh', n=32, translated=30, kept_english=2, qe_method='roundtrip', qe_mean=.7, qe_lo=.65, qe_hi=.75, ci_unit='instruction', dropped=1)])
    return folder


def table_rows(md: str, heading: str) -> list:
    "The rows of the first markdown table after `heading`, as lists of cell strings."
    part = md.split(heading, 1)[1]
    lines = [l for l in part.splitlines() if l.startswith('|')]
    out, started = [], False
    for l in part.splitlines():
        if l.startswith('|'): started = True; out.append([c.strip() for c in l.strip('|').split('|')])
        elif started: break
    return out[2:]


# --- tables by hand -----------------------------------------------------------------------------------------------

def test_tables_by_hand(tmp_path):
    R = load_run(make_run(tmp_path))
    P = performance_table(R['tables']['scores'], n_boot=200).set_index(['culture', 'model'])
    assert P.loc[('arabic', 'base'), 'macro_f1'] == pytest.approx(.4) and P.loc[('arabic', 'arabic'), 'macro_f1'] == pytest.approx(.5)
    assert P.loc[('german', 'german'), 'macro_f1'] == pytest.approx(.6)
    # above the majority class (0.45): arabic base 0.6 only (its low end 0.5 too); arabic tuned 0.5, 0.7 (low ends 0.4, 0.6: one)
    assert P.loc[('arabic', 'base'), ['above_majority', 'ci_above_majority']].tolist() == [1, 1]
    assert P.loc[('arabic', 'arabic'), ['above_majority', 'ci_above_majority']].tolist() == [2, 1]
    assert P.loc[('german', 'base'), ['tasks', 'items', 'above_majority', 'ci_above_majority']].tolist() == [3, 120, 3, 0]
    assert P.loc[('german', 'base'), ['lo', 'hi']].tolist() == pytest.approx([.5, .5])   # every task 0.5: a zero-width interval
    V = vs_base_table(R['tables']['scores']).set_index('culture')
    # arabic: +0.1 on every task, interval [0.05, 0.15]: 3 better; german: -0.1, +0.1, +0.3: 2 better, 1 worse
    assert V.loc['arabic', ['tasks', 'better', 'worse', 'includes_zero']].tolist() == [3, 3, 0, 0]
    assert V.loc['german', ['better', 'worse', 'includes_zero']].tolist() == [2, 1, 0] and V.loc['german', 'mean_diff'] == pytest.approx(.1)
    W = wvs_table(R['tables']['scores']).set_index(['culture', 'model'])
    assert W.loc[('arabic', 'arabic'), ['alignment', 'uniform', 'all_countries', 'diff']].tolist() == pytest.approx([.6, .7, .8, .1])
    assert set(W.index.get_level_values('model')) == {'base', 'arabic', 'german'}   # baselines are not models
    A = ablation_table(R['tables']['ablation']).set_index(['culture', 'setting'])
    assert A.loc[('arabic', 'wvs'), 'mean'] == pytest.approx(.5) and A.loc[('arabic', 'wvs'), 'n_seeds'] == 3
    assert A.loc[('arabic', 'wvs'), ['sd', 'lo', 'hi']].tolist() == pytest.approx([.1, .4, .6])   # sd of 0.4, 0.5, 0.6; the mean of the seeds' intervals
    assert A.loc[('arabic', 'base'), ['lo', 'hi']].tolist() == pytest.approx([.2, .4])   # one seed: the run's own interval
    S = ablation_table(R['tables']['ablation'], R['tables']['ablation_summary']).set_index(['culture', 'setting'])   # the stage's own summary wins
    assert S.loc[('german', 'wvs'), ['lo', 'hi']].tolist() == [.4, .6] and S.loc[('arabic', 'wvs'), 'hi'] == A.loc[('arabic', 'wvs'), 'hi']
    assert len(S) == len(A)
    w = winrate_table(R['tables']['winrate']).iloc[0]
    assert [w.win, w.tie, w.loss, w.net] == pytest.approx([.6, .1, .3, .3])
    sc = scaling_table(R['tables']['scaling']).set_index('size')
    assert sc.value.tolist() == pytest.approx([20, 17, 12]) and sc.seeds.tolist() == [1, 2, 1]
    vt = values_table(pd.DataFrame(dict(culture='arabic', model='base', country=['DEU', 'JOR', 'IRQ'], name=['Germany', 'Jordan', 'Iraq'],
                                        similarity=[.7, .6, .65])), {'arabic': ('IRQ', 'JOR')}).iloc[0]
    assert (vt.top, vt.own_rank, vt.own_similarity) == ('Germany', 2, .65)


def test_report_tables_match_hand_values(tmp_path):
    rec = build_report(make_run(tmp_path), formats=('png',), dpi=50, n_boot=200)
    md = (tmp_path / 'report.md').read_text()
    perf = {(r[0], r[1]): r for r in table_rows(md, '## Downstream tasks')}
    assert perf[('arabic', 'arabic')][2:4] == ['3', '120'] and perf[('arabic', 'arabic')][4].startswith('0.500 [')
    assert perf[('german', 'base')][4] == '0.500 [0.500, 0.500]'
    assert [r[:3] for r in table_rows(md, '### arabic: per task')][0] == ['offensive_detect', '40', '0.450']
    assert table_rows(md, '### arabic: per task')[0][4:] == ['0.200 [0.100, 0.300]', '0.300 [0.200, 0.400]', 'item']
    vb = {(r[0], r[1]): r[2:] for r in table_rows(md, '## Differences from the base model')}
    assert vb[('german', 'german')] == ['3', '0.100', '2', '1', '0']
    ab = {(r[0], r[1]): r[3] for r in table_rows(md, '## Ablations')}
    assert ab[('german', 'wvs')] == '0.500 [0.400, 0.600]'
    # the reading is computed: arabic's culture model is above the majority class on 2 of 3 tasks, reliably on 1
    assert 'culture model 0.500 (above the majority class on 2/3 tasks, reliably on 1)' in md
    assert 'Against the base model, 0 of 6 per-task differences have a 95% interval that includes zero; 5 are reliably better and 1 reliably worse' in md
    assert 'WVS alignment: 0 of 4 (culture, split, model) scores are reliably above the uniform-answer baseline' in md
    assert 'Data size, arabic perplexity: 20.000 at 0 samples → 12.000 at 200 (intervals do not overlap).' in md
    assert 'Git revision `feedbeef` (with uncommitted changes)' in md and '| evaluate | german | ok | 20 | – | True |' in md
    assert '| evaluate | arabic | ok | 30 | 1536 | False |' in md and 'peak memory of its largest task 1536 MiB' in md
    assert 'Sum of stage seconds: 50; last run wall time 99 s; peak memory of its largest task 1536 MiB' in md
    for link in re.findall(r'\]\((figures/[^)]+)\)', md): assert (tmp_path / link).exists(), link
    want = {'performance', 'vs_base', 'wvs', 'ablation', 'local', 'winrate', 'forgetting', 'scaling', 'translation'}
    assert set(rec['figures']) == want and set(rec['absent']) == set(PARTS) - want
    assert (tmp_path / 'figures' / 'analysis_local.png').exists() and not (tmp_path / 'figures' / 'analysis_local.pdf').exists()



# --- the unit of every interval -----------------------------------------------------------------------------------

def test_performance_interval_resamples_text_sources(tmp_path):
    "Tasks on one set of texts are one unit of the mean over tasks: named `text source`, counted in `sources`; one source alone gives no interval."
    from culturellm.stats import bootstrap_ci
    S = load_run(make_run(tmp_path, parts=('scores',)))['tables']['scores']
    P = performance_table(S, n_boot=300).set_index(['culture', 'model'])
    assert P.loc[('arabic', 'base'), ['ci_unit', 'sources']].tolist() == ['task', 3]
    sh = S.assign(text_source=S.task.replace({'hate_detect': 'offensive_detect'}))          # offensive and hate: the same texts
    Q = performance_table(sh, n_boot=300).set_index(['culture', 'model'])
    assert Q.loc[('arabic', 'base'), ['ci_unit', 'sources']].tolist() == ['text source', 2]
    want = bootstrap_ci(np.array([.2, .4, .6]), n_boot=300, seed=0, clusters=['offensive_detect', 'offensive_detect', 'spam_detect'])
    assert Q.loc[('arabic', 'base'), ['macro_f1', 'lo', 'hi']].tolist() == pytest.approx(list(want))
    one = performance_table(S.assign(text_source='detoxis'), n_boot=300).set_index(['culture', 'model'])   # every task on one set of texts
    assert np.isnan(one.loc[('arabic', 'base'), 'lo']) and one.loc[('arabic', 'base'), 'sources'] == 1
    old = performance_table(S.drop(columns=['text_source']), n_boot=300).set_index(['culture', 'model'])   # an older run: tasks
    assert old.loc[('arabic', 'base'), 'ci_unit'] == 'task' and old.loc[('arabic', 'base'), 'lo'] == pytest.approx(P.loc[('arabic', 'base'), 'lo'])


def test_geomlama_reading_counts_real_mean_intervals(tmp_path):
    "Through the gallery stage's own tables: the mean rows now have intervals, so the reading counts the settings reliably above random (it said 0 always)."
    from culturellm.gallery import COUNTRIES, geomlama_scores
    R = pd.DataFrame([dict(lang='en', setting=st, q=q, country=c, hits=int(st == 'country' or q % 2), k=1, n=4)
                      for st in ('country', 'no_country') for q in range(8) for c in COUNTRIES])   # country: always right; no_country: half (random 1/4)
    S = geomlama_scores(R, n_boot=300)
    assert S[S.country == 'mean'][['ci_low', 'ci_high']].notna().all().all()
    _csv(tmp_path / 'results' / 'gallery_geomlama_scores.csv', S.to_dict('records'))
    build_report(tmp_path, formats=('png',), dpi=40, n_boot=100)
    md = (tmp_path / 'report.md').read_text()
    assert 'GeoMLaMA: 1 of 2 (language, setting) mean precisions are reliably above their random-ranking baseline (intervals resample: question)' in md
    assert 'Intervals resample: question.' in md.split('## Global Gallery: GeoMLaMA')[1]


def test_every_interval_in_the_report_names_its_unit(tmp_path):
    "Each report section showing an interval says what it resampled (column or caption); files without `ci_unit` say 'unit not recorded'."
    build_report(make_run(tmp_path / 'new'), formats=('png',), dpi=40, n_boot=100)
    md = (tmp_path / 'new' / 'report.md').read_text()
    sections = {h: b for h, b in (x.split('\n', 1) for x in md.split('\n## ')[1:])}
    for h in ('Downstream tasks', 'Differences from the base model', 'WVS alignment', 'Ablations', 'Open-ended win rates', 'Forgetting',
              'Data size', 'Global Gallery: translated Alpaca'):
        assert 'Intervals resample:' in sections[h] or '| ci_unit |' in sections[h], h
    assert 'Intervals resample: item.' in sections['Differences from the base model'] and '| seed question |' in sections['WVS alignment']
    assert 'Intervals resample: instruction.' in sections['Global Gallery: translated Alpaca']
    assert 'Intervals resample: unit not recorded.' in sections['Forgetting']            # the forgetting rows carry no ci_unit
    run = make_run(tmp_path / 'old')
    for f in (run / 'results').glob('*.csv'):
        d = pd.read_csv(f); d.drop(columns=[c for c in ('ci_unit', 'text_source') if c in d]).to_csv(f, index=False)
    build_report(run, formats=('png',), dpi=40, n_boot=100)
    old = {h: b for h, b in (x.split('\n', 1) for x in (run / 'report.md').read_text().split('\n## ')[1:])}
    assert 'Intervals resample: unit not recorded.' in old['Differences from the base model'] and '| unit not recorded |' in old['WVS alignment']
    assert table_rows((run / 'report.md').read_text(), '## Downstream tasks')[0][5] == 'task'     # the analysis's own interval: over tasks


def test_judge_intervals_resample_seed_questions(tmp_path):
    "The paraphrase judge's ratings: a seed's paraphrases are drawn together (the same interval as one mean rating per seed)."
    from culturellm.analysis import judge_ci, judge_unit
    from culturellm.stats import bootstrap_ci
    j = pd.DataFrame(dict(set='ours', seed=np.repeat([f's{i}' for i in range(6)], 3), rating=np.repeat([1, 2, 2, 3, 1, 3], 3)))
    assert judge_unit(j) == 'seed question' and judge_unit(j.drop(columns='seed')) == 'rated pair'
    assert judge_ci(j, 'rating', 400) == pytest.approx(bootstrap_ci(np.array([1, 2, 2, 3, 1, 3], float), n_boot=400, seed=0))
    _csv(tmp_path / 'results' / 'augment_judge.csv', j.to_dict('records'))
    build_report(tmp_path, formats=('png',), dpi=40, n_boot=100)
    assert 'Augmentation judge (rating; intervals resample seed questions)' in (tmp_path / 'report.md').read_text()

# --- partial and empty runs ---------------------------------------------------------------------------------------

def test_absent_parts_are_reported_and_not_drawn(tmp_path):
    rec = build_report(make_run(tmp_path, parts=('translation',)), formats=('png', 'pdf'), dpi=50)
    md = (tmp_path / 'report.md').read_text()
    assert rec['figures'] == {'translation': ['analysis_translation']}
    assert sorted(p.name for p in (tmp_path / 'figures').iterdir()) == ['analysis_translation.pdf', 'analysis_translation.png']
    absent = md.split('**Not in this run**')[1].split('\n')[0]
    for part in ('performance', 'wvs', 'agreement', 'augment', 'ablation', 'scaling', 'geomlama', 'camel'):
        assert PARTS[part][0] in absent
    assert 'translated Alpaca' not in absent and '## Downstream tasks' not in md and '## Global Gallery: translated Alpaca' in md


def test_empty_run_folder(tmp_path):
    "A run folder with nothing in it yet: a report that says so, no figure, no error."
    rec = build_report(tmp_path, formats=('png',))
    assert rec['figures'] == {} and set(rec['absent']) == set(PARTS) and not (tmp_path / 'figures').exists()
    md = (tmp_path / 'report.md').read_text()
    assert '_config.json not found_' in md and 'Not in this run' in md


def test_every_task_skipped(tmp_path):
    "A run with no data root scores no task (every row skipped): no performance figure or table, the rest still reported."
    (tmp_path / 'results').mkdir()
    (tmp_path / 'results' / 'scores_arabic.csv').write_text(
        'culture,model,task,metric,value,ci_low,ci_high,n,majority_baseline,random_baseline,ceiling,p_value,excluded,flags,scoring,status\n'
        'arabic,*,offensive_detect,macro_f1,,,,,,,,,,,logprobs,skipped: no data root\n'
        'arabic,*,hate_detect,macro_f1,,,,,,,,,,,logprobs,skipped: no data root\n')
    rec = build_report(tmp_path, formats=('png',))
    assert 'performance' in rec['absent'] and 'performance' not in rec['figures']
    assert 'Downstream tasks: on' not in (tmp_path / 'report.md').read_text()


# --- bad input ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name, text, want', [
    ('scores_arabic.csv', 'culture,model,task,metric,value,ci_low,n\narabic,base,t,macro_f1,0.5,0.4,40\n', "scores_arabic.csv: missing column 'ci_high'"),
    ('scores_arabic.csv', 'culture,model,task,metric,value,ci_low,ci_high,n\narabic,base,t,macro_f1,0.5,0.4,0.6,40\narabic,base,u,macro_f1,n/a?,0.4,0.6,40\n',
     "scores_arabic.csv, row 3: column 'value' expected a number, got 'n/a?'"),
    ('scaling.csv', 'size,measure,value\nten,perplexity,3.0\n', "scaling.csv, row 2: column 'size' expected a number, got 'ten'"),
    ('winrate_arabic.csv', 'culture,model,n,win,loss\narabic,arabic,10,5,3\n', "winrate_arabic.csv: missing column 'tie'"),
    ('ablation_summary_arabic.csv', '', 'ablation_summary_arabic.csv: empty file'),
])
def test_malformed_csv_is_a_one_line_error(tmp_path, name, text, want):
    (tmp_path / 'results').mkdir(); (tmp_path / 'results' / name).write_text(text)
    with pytest.raises(AnalysisDataError) as e: build_report(tmp_path, formats=('png',))
    assert want in str(e.value) and '\n' not in str(e.value)
    assert not (tmp_path / 'report.md').exists()   # nothing half-written


def test_bad_json_and_formats(tmp_path):
    (tmp_path / 'manifest.json').write_text('{"stages": ')
    with pytest.raises(AnalysisDataError, match=r'manifest.json: not valid JSON \(line 1'): load_run(tmp_path)
    with pytest.raises(AnalysisDataError, match=r"'analysis.formats': expected some of png, pdf, svg, got 'jpg'"): build_report(tmp_path, formats=('jpg',))


def test_config_section():
    assert [get_config(p).analysis.n_boot for p in ('smoke', 'cpu', 'paper')] == [200, 1000, 2000]
    assert get_config('cpu').analysis.formats == ['png', 'pdf']
    with pytest.raises(ConfigError, match="'analysis.dpi'"): get_config('cpu', {'analysis': {'dpi': 5}})


def test_md_table():
    t = md_table(pd.DataFrame(dict(a=['x|y'], n=[3.0], v=[0.12345], m=[np.nan])))
    assert t.splitlines() == ['| a | n | v | m |', '|---|---|---|---|', '| x\\|y | 3 | 0.123 | – |']


# --- the real cpu results -----------------------------------------------------------------------------------------

@pytest.fixture
def real_run(tmp_path) -> Path:
    "A copy of this checkout's cpu run results (evaluate and gallery), without the per-item predictions."
    if not (CPU_EVAL / 'results' / 'scores.csv').exists(): pytest.skip(f'no cpu run at {CPU_EVAL}')
    run = tmp_path / 'run'; (run / 'results').mkdir(parents=True)
    for f in ('config.json', 'manifest.json'): shutil.copy(CPU_EVAL / f, run / f)
    shutil.copytree(CPU_EVAL / 'records', run / 'records')
    for p in (CPU_EVAL / 'results').iterdir():
        if p.is_file() and not p.name.startswith(('predictions', '.')): shutil.copy(p, run / 'results' / p.name)
    if (CPU_GALLERY / 'results').is_dir():
        for p in (CPU_GALLERY / 'results').glob('gallery_*.csv'): shutil.copy(p, run / 'results' / p.name)
    return run


def test_real_cpu_results(real_run):
    rec = build_report(real_run, formats=('png',), dpi=60, n_boot=200)
    md = (real_run / 'report.md').read_text()
    S = pd.read_csv(real_run / 'results' / 'scores.csv')
    f1 = S[(S.metric == 'macro_f1') & (S.status == 'ok')]
    perf = {(r[0], r[1]): r for r in table_rows(md, '## Downstream tasks')}
    for (c, m), g in f1.groupby(['culture', 'model']):
        assert perf[(c, m)][2] == str(len(g)) and perf[(c, m)][4].startswith(f'{g.value.mean():.3f}')
    nobody = sum(not (g.value > g.majority_baseline).any() for _, g in f1.groupby(['culture', 'task']))
    assert f"on {nobody} of {f1.groupby(['culture', 'task']).ngroups} (culture, task) pairs no model's macro-F1 is above the majority-class baseline" in md
    assert {'performance', 'vs_base', 'wvs', 'values', 'agreement', 'augment'} <= set(rec['figures'])
    if (CPU_GALLERY / 'results' / 'gallery_geomlama_scores.csv').exists(): assert {'geomlama', 'camel'} <= set(rec['figures'])
    for link in re.findall(r'\]\((figures/[^)]+)\)', md): assert (real_run / link).exists(), link


# --- the notebook under papermill ---------------------------------------------------------------------------------

def test_notebook_papermill_smoke(tmp_path):
    "The stage as the runner runs it: the injected run folder is the one analysed, its record and report written there."
    pm = pytest.importorskip('papermill')
    run = make_run(tmp_path / 'run', parts=('scores', 'winrate'))
    pm.execute_notebook(str(REPO / 'nbs' / '07_analysis.ipynb'), str(tmp_path / 'out.ipynb'), cwd=str(REPO / 'nbs'), progress_bar=False,
                        parameters=dict(culture='all', profile='smoke', run_dir=str(run), config_file=None))
    got = json.loads((run / 'records' / 'analysis' / 'all.json').read_text())
    assert set(got['figures']) == {'performance', 'vs_base', 'wvs', 'winrate'}
    assert (run / 'figures' / 'analysis_winrate_arabic.pdf').exists() and 'arabic' in (run / 'report.md').read_text()


def test_gallery_with_models(tmp_path):
    "Global Gallery tables with a `model` column (base and a language-tuned model): one figure each, the tables and reading per model."
    res = tmp_path / 'results'
    _csv(res / 'gallery_geomlama_scores.csv', [dict(model=m, lang='zh', setting=st, country=c, precision=p + d, ci_low=p + d - .1, ci_high=p + d + .1,
                                                    random=.3, questions=8, hits=1, k=3)
                                               for m, d in (('base', 0), ('tuned-zh', .2)) for st in ('country', 'no_country')
                                               for c, p in (('us', .3), ('china', .4), ('mean', .35))])
    _csv(res / 'gallery_camel_scores.csv', [dict(model=m, setting=1, country=c, category=cat, metric='accuracy', better='higher', value=v, ci_low=v - .1,
                                                 ci_high=v + .1, chance=1 / 6, n=4)
                                            for m, v in (('base', .2), ('tuned-zh', .5)) for c in ('USA', 'China', 'all') for cat in ('food', 'beverage', 'location', 'Overall')])
    rec = build_report(tmp_path, formats=('png',), dpi=50)
    assert rec['figures'] == {'geomlama': ['analysis_geomlama'], 'camel': ['analysis_camel_radar']}
    md = (tmp_path / 'report.md').read_text()
    geo = table_rows(md, '## Global Gallery: GeoMLaMA')
    assert ['tuned-zh', 'zh', 'country', '0.550 [0.450, 0.650]', '0.300'] in geo and ['base', 'zh', 'country', '0.350 [0.250, 0.450]', '0.300'] in geo
    assert 'GeoMLaMA: 2 of 4 (model, language, setting) mean precisions are reliably above their random-ranking baseline' in md
    assert 'setting 1 accuracy 0.500 [0.400, 0.600] vs chance 0.167' in md


def test_distribution_targets_in_the_report(tmp_path):
    "The alignment stage's rows (alignment_<culture>.csv) join the scores; the report states each distribution-trained model against its one-answer twin and shows the per-question bars."
    from culturellm.analysis import targets_table
    run = make_run(tmp_path / 'run', parts=('scores',))
    rows = [dict(culture='arabic', model='arabic-dist', task='WVS: held-out topic: MIGRATION', metric=m, value=v, ci_low=lo, ci_high=hi,
                 ci_unit='seed question', n=8, status='ok') for m, v, lo, hi in (('wvs_1-jsd_dist_vs_majority', .2, .1, .3),
                                                                               ('wvs_wasserstein_dist_vs_majority', -.1, -.2, .05))]
    _csv(run / 'results' / 'alignment_arabic.csv', rows)
    (run / 'figures').mkdir(exist_ok=True); shutil.copy(REPO / 'nbs' / 'images' / 'country_map.png', run / 'figures' / 'alignment_arabic_answers_x.png')
    T = targets_table(load_run(run)['tables']['scores'])
    assert T[['model', 'versus', 'split', 'n', 'jsd_diff', 'wass_hi']].values.tolist() == [['arabic-dist', 'arabic', 'held-out topic: MIGRATION', 8, .2, .05]]
    md = (Path(build_report(run, ('png',), 60, 200)['report'])).read_text()
    row = table_rows(md, 'Trained on the distribution vs on one answer')
    assert row and row[0][-1] == 'closer' and row[0][5] == '0.200 [0.100, 0.300]'   # reading, jsd_diff
    assert '](figures/alignment_arabic_answers_x.png)' in md
