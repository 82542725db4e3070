"""Ablation: the settings' training sets nest and match the finetune stage's, the measures agree with their definitions,
the judge is read in both orders, and the stage notebook run in a run folder writes every results file, runs the
forgetting check on small GSM8K- and BBH-format files, and trains nothing again on a rerun."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from culturellm.ablation import (RESULT_COLUMNS, bench_correct, downstream_rows, forgetting_table, judge_pairs, local_prompts,
                                 read_bbh, read_gsm8k, summarise, train_setting, variant_samples, win_rates)
from culturellm.config import config_to_dict, get_config, write_jsonl
from culturellm.evaluate import ModelPool, ModelSpec, load_tasks
from culturellm.finetune import split_augmented, variant_questions, culture_samples
from culturellm.llm import CallCache, OptionScores
from culturellm.seeds import CULTURES, culture_answers, load_questions, wvs_counts

REPO = Path(__file__).resolve().parents[1]
QS = load_questions()
GSM = [{"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": "3 + 4 = 7\n#### 7"},
       {"question": "A box holds 12 eggs. How many eggs are in 2 boxes?", "answer": "12 * 2 = 24\n#### 24"},
       {"question": "What is 1,000 + 250?", "answer": "#### 1,250"}]
BBH = {"examples": [{"input": "not ( True ) and ( True ) is", "target": "False"},
                    {"input": "True and not not ( not False ) is", "target": "True"}]}


def answers(name):
    C = CULTURES[name]
    return culture_answers(C, wvs_counts(C))


def aug_records():
    return {'a': [dict(q_id=q.id, text=f'Please say: {q.text}', step=1, status='kept') for q in QS[:6]],
            'b': [dict(q_id=q.id, text=f'Say: {q.text}', step=2) for q in QS[:10]]}


def test_ablation_sets_are_the_finetune_stages_sets():
    "wvs_ab is exactly the set the finetune stage trains on (same builder, same split); the variants nest; One is the union."
    F = get_config('smoke').finetune
    aug = aug_records(); A = {c: answers(c) for c in ('arabic', 'english')}
    tr = split_augmented(aug, F.holdout, 0)[0]
    fin = culture_samples(variant_questions(QS, tr, 'wvs_ab', F.augmented, 0), CULTURES['arabic'], A['arabic'])[0]
    ours = variant_samples(QS, tr, [CULTURES['arabic']], A, 'wvs_ab', F)
    assert [r['messages'] for r in ours] == [r['messages'] for r in fin]
    sets = {v: {json.dumps(r['messages']) for r in variant_samples(QS, tr, [CULTURES['arabic']], A, v, F)} for v in ('wvs', 'wvs_a', 'wvs_ab')}
    assert sets['wvs'] < sets['wvs_a'] < sets['wvs_ab']
    one = variant_samples(QS, tr, [CULTURES['arabic'], CULTURES['english']], A, 'wvs', F, one=True)
    assert len(one) == sum(len(variant_samples(QS, tr, [CULTURES[c]], A, 'wvs', F)) for c in ('arabic', 'english'))


def test_release_local_set_matches_the_seed_questions(data_root):
    "The release's Arabic translated set holds the 50 seed questions first, each with its answer range."
    f = Path(data_root) / 'culturellm' / 'Arabic' / 'Finetune' / 'WVQ_arabic_Iraq_L.jsonl'
    p = local_prompts(f, QS)
    assert len(p) == 50 and len(set(p.values())) == 50
    with pytest.raises(ValueError, match='line 1: expected the answer range'):
        local_prompts(f, QS[10:])                    # shifted: the rows do not ask these questions


def test_measures_and_summary():
    "Mean macro-F1 over tasks is the mean of the per-task scores; the summary is mean ± sd over seeds, never the best."
    tasks = [t for t in load_tasks() if t.culture == 'arabic'][:2]
    rows = []
    for t in tasks:
        g = [t.labels[0]] * 5 + [t.labels[1]] * 5
        rows += [dict(culture='arabic', task=t.task, gold=a, pred=b) for a, b in zip(g, g[::-1])]
    r = pd.DataFrame(downstream_rows(pd.DataFrame(rows), tasks, 300))
    per = r[r.measure == 'macro_f1'].score
    assert len(per) == 2 and r[r.measure == 'macro_f1_mean'].score.iloc[0] == pytest.approx(per.mean())
    res = pd.DataFrame([dict(culture='x', setting='wvs', seed=s, measure='agreement', task='t', score=v, lo=v - .1, hi=v + .1, n=8, model='m')
                        for s, v in enumerate([.2, .4, .9])], columns=RESULT_COLUMNS)
    s = summarise(res).iloc[0]
    assert (s['mean'], s.n_seeds) == (pytest.approx(0.5), 3) and s.sd == pytest.approx(np.std([.2, .4, .9], ddof=1))


class OrderJudge:
    "Prefers whichever answer contains 'good', in either position; else says A (position bias)."
    def score_options(self, items):
        out = []
        for msgs, opts in items:
            t = msgs[0]['content']; a = t.split('Answer A: ')[1].split('\n\nAnswer B: ')[0]; b = t.split('Answer B: ')[1].split('\n\n')[0]
            lp = [0.0, -5.0, -5.0] if 'good' in a and 'good' not in b else [-5.0, 0.0, -5.0] if 'good' in b and 'good' not in a else [0.0, -3.0, -5.0]
            out.append(OptionScores(options=opts, logprob=lp, n_tokens=[1, 1, 1]))
        return out


def test_judge_reads_both_orders():
    "A real preference wins in both orders; position bias alone gives ties; rates come with intervals."
    pairs = [('q1?', 'a good answer', 'a bad one'), ('q2?', 'bad', 'good too'), ('q3?', 'x', 'y')]
    J = judge_pairs(OrderJudge(), CULTURES['german'], pairs)
    assert J.outcome.tolist() == ['win', 'loss', 'tie'] and J.consistent.tolist() == [True, True, False]
    w = win_rates(J.outcome.tolist(), 300)
    assert (w['n'], w['win'], w['tie'], w['loss']) == (3, pytest.approx(1 / 3), pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert w['win_lo'] <= w['win'] <= w['win_hi']


def test_forgetting_on_small_files(tmp_path):
    "GSM8K and BBH files are read and scored; base and tuned answer the same items; bad files name the line."
    g = tmp_path / 'gsm8k.jsonl'; write_jsonl(g, GSM)
    b = tmp_path / 'bbh.json'; b.write_text(json.dumps(BBH))
    gi, bi = read_gsm8k(g), read_bbh(b)
    assert [x['target'] for x in gi] == ['7', '24', '1250'] and [x['target'] for x in bi] == ['False', 'True']
    assert bench_correct('so 1,250 in all', gi[2], 'gsm8k') and not bench_correct('The answer is 12.', gi[1], 'gsm8k')
    assert bench_correct('The answer is True.', bi[1], 'bbh') and not bench_correct('The answer is True.', bi[0], 'bbh')
    F = get_config('smoke').finetune
    recs = variant_samples(QS, {'a': [], 'b': []}, [CULTURES['english']], {'english': answers('english')}, 'wvs', F)[:8]
    t = train_setting(F, recs, tmp_path, 'english', 'wvs', 0, 1)
    pool = ModelPool(CallCache(tmp_path / 'cache'))
    tab, rep = forgetting_table(pool, [ModelSpec('base', F.model), ModelSpec('wvs (seed 0)', F.model, adapter=t['path'])],
                                {'gsm8k': ('gsm8k', gi), 'bbh': ('bbh', bi)}, 'english', max_tokens=6, n_boot=200)
    assert tab.groupby('benchmark').n.unique().map(list).tolist() == [[2], [3]]
    assert set(tab.model) == {'base', 'wvs (seed 0)'} and ((tab.lo <= tab.accuracy) & (tab.accuracy <= tab.hi)).all()
    assert len(rep) == 2 * 5 and rep.correct.dtype == bool
    (tmp_path / 'bad.jsonl').write_text('{"question": "q", "answer": "7"}\n')
    with pytest.raises(ValueError, match="bad.jsonl, line 1, key 'answer'"): read_gsm8k(tmp_path / 'bad.jsonl')


def test_stage_in_a_run_folder(tmp_path, data_root):
    """The notebook in a run folder (as the runner runs it): every results file with its columns, the forgetting check on the
    supplied files, the record; run again, it trains nothing."""
    papermill = pytest.importorskip('papermill')
    run = tmp_path / 'run'
    C = CULTURES['english']
    (run / 'data' / 'answers').mkdir(parents=True)
    (run / 'data' / 'answers' / 'english.json').write_text(json.dumps({'answers': {str(k): v for k, v in answers('english').items()}}))
    aug = aug_records()
    write_jsonl(run / 'data' / 'augment_step1.jsonl', aug['a']); write_jsonl(run / 'data' / 'augmented.jsonl', aug['b'])
    write_jsonl(tmp_path / 'gsm8k.jsonl', GSM); (tmp_path / 'bbh.json').write_text(json.dumps(BBH))
    cfg = get_config('smoke', {'cultures': ['english'], 'data_root': str(data_root),
                               'ablation': {'variants': ['wvs', 'wvs_ab'], 'gsm8k_file': str(tmp_path / 'gsm8k.jsonl'),
                                            'bbh_file': str(tmp_path / 'bbh.json'), 'forgetting_items': 2}})
    (tmp_path / 'config.json').write_text(json.dumps(config_to_dict(cfg)))
    params = dict(culture='english', profile='smoke', run_dir=str(run), config_file=str(tmp_path / 'config.json'))
    for k in range(2):
        papermill.execute_notebook(str(REPO / 'nbs' / '04_ablation.ipynb'), str(tmp_path / f'out{k}.ipynb'), parameters=params,
                                   cwd=str(REPO / 'nbs'), progress_bar=False, kernel_name='python3')
        rec = json.loads((run / 'records' / 'ablation' / 'english.json').read_text())
        if k == 0: first = rec
    res = pd.read_csv(run / 'results' / 'ablation_english.csv')
    assert list(res.columns) == RESULT_COLUMNS and set(res.setting) >= {'base', 'wvs', 'wvs_ab'}
    assert sorted(res[res.setting == 'wvs'].seed.dropna().unique()) == [0, 1]
    summ = pd.read_csv(run / 'results' / 'ablation_summary_english.csv')
    assert list(summ.columns) == ['culture', 'setting', 'measure', 'mean', 'sd', 'n_seeds', 'lo', 'hi', 'ci_unit']
    fg = pd.read_csv(run / 'results' / 'forgetting_english.csv')
    assert list(fg.columns) == ['culture', 'model', 'benchmark', 'n', 'accuracy', 'lo', 'hi', 'ci_unit'] and len(fg) == 4 and set(fg.n) == {2}
    wr = pd.read_csv(run / 'results' / 'winrate_english.csv')
    assert {'anchor: survey answer vs opposite end', 'anchor: identical answers'} <= set(wr.model)
    assert 'forgetting' not in first['not_run'] and first['not_run']['wvs_local'] == "English is the culture's own language"
    assert all(a['reused'] for a in rec['adapters']) and not any(a['reused'] for a in first['adapters'])
    assert (run / 'figures' / 'ablation_english.png').exists() and (run / 'figures' / 'ablation_forgetting_english.png').exists()
