"""Global Gallery evaluation: precision@k against hand-computed rankings, the random baseline of the released
data, a calibration that re-ranks, the country removal in six languages, the data defects found, the CAMeL
distractor invariants of every setting, CAPPr's mean against a direct forward pass, and the re-scorer on files in
the original's released format (also through the `culturellm rescore` command)."""
import json, re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from culturellm.config import ConfigError, get_config
from culturellm.gallery import (ALPACA, CAMEL_COUNTRIES, COUNTRIES, COUNTRY_NAMES, GENDER_PAIRS, LANGUAGES, US_WORDS,
                                alpaca_prompt, calibrated_ranking, camel_items, camel_outcomes, camel_priors, camel_scores,
                                check_gallery_config, check_geomlama, geomlama_items, geomlama_results, geomlama_scores,
                                load_camel, load_geomlama, match_gold, option_probs, precision_at_k, precision_table,
                                random_hits, ranking, read_released, released_frame, remove_country, rescore_geomlama)
from culturellm.run import main


@pytest.fixture(scope='session')
def gg(data_root) -> Path:
    "The Global Gallery data folder (skips where absent, like the CultureLLM data)."
    p = data_root / 'global-gallery'
    if not p.is_dir(): pytest.skip(f"Global Gallery data not found at {p}")
    return p


# --- precision@k and the random baseline -------------------------------------------------------------------

@pytest.mark.parametrize('probs, order, gold, want_rank, want', [
    ({'a': .5, 'b': .3, 'c': .2}, None, ['a'], ['a', 'b', 'c'], (1, 1)),
    ({'a': .5, 'b': .3, 'c': .2}, None, ['b', 'c'], ['a', 'b', 'c'], (1, 2)),
    ({'a': .1, 'b': .6, 'c': .3}, None, ['a', 'c'], ['b', 'c', 'a'], (1, 2)),
    ({'a': .4, 'b': .4, 'c': .2}, ['c', 'b', 'a'], ['a'], ['b', 'a', 'c'], (0, 1)),     # a tie keeps the order shown
    ({'x': .25, 'y': .25, 'z': .25, 'w': .25}, ['w', 'z', 'y', 'x'], ['w', 'z', 'y'], ['w', 'z', 'y', 'x'], (3, 3)),
])
def test_precision_at_k_by_hand(probs, order, gold, want_rank, want):
    "The ranking is by probability with ties in the order shown; hits are the gold answers among its first k = len(gold)."
    rk = ranking(probs, order)
    assert rk == want_rank and precision_at_k(rk, gold) == want


def test_precision_is_micro_averaged_with_its_baseline():
    "A country's score is Σ hits / Σ k over its questions; the random baseline Σ k²/n / Σ k; the interval holds the score."
    R = pd.DataFrame(dict(country=['us'] * 3, hits=[1, 0, 2], k=[1, 2, 3], n=[4, 2, 6]))
    t = precision_table(R, ['country']).iloc[0]
    assert t.precision == pytest.approx(3 / 6) and t.random == pytest.approx((1 / 4 + 4 / 2 + 9 / 6) / 6)
    assert t.ci_low <= t.precision <= t.ci_high and (t.questions, t.hits, t.k) == (3, 3, 6)
    assert random_hits(2, 8) == 0.5


def test_random_baseline_of_released_data(gg):
    "The released English data's random-ranking baseline: 0.311, 0.295, 0.342, 0.305, 0.335, 0.331; mean 0.320."
    d = load_geomlama(gg / 'geomlama' / 'en.csv').assign(hits=0)
    d['k'], d['n'] = d.gold.map(len), d.candidates.map(len)
    b = precision_table(d, ['country'], n_boot=100).set_index('country').random[list(COUNTRIES)]
    assert np.allclose(b, [0.311, 0.295, 0.342, 0.305, 0.335, 0.331], atol=5e-4) and b.mean() == pytest.approx(0.320, abs=5e-4)



# --- the unit of every interval -----------------------------------------------------------------------------

def _perfectly_shared(hits, lang='en', setting='country'):
    "Scored rows where every country answers each question alike: hits[q] in all six countries (k 1, n 2)."
    return pd.DataFrame([dict(lang=lang, setting=setting, q=q, country=c, hits=h, k=1, n=2) for q, h in enumerate(hits) for c in COUNTRIES])


def test_geomlama_mean_rows_have_question_intervals():
    "The mean over countries carries an interval (it had none: NaN) and its gap over the random baseline; both resample questions."
    S = geomlama_scores(_perfectly_shared([1, 0, 1, 1, 0, 1, 1, 0]), n_boot=400).set_index('country')
    m = S.loc['mean']
    assert np.isfinite([m.ci_low, m.ci_high, m.gap_low, m.gap_high]).all() and m.ci_low < 5 / 8 < m.ci_high
    assert m.precision == pytest.approx(5 / 8) and m.random == pytest.approx(1 / 2) and m.ci_unit == 'question' and m.questions == 8
    # six countries answering alike are one observation per question: the mean's interval is one country's, not narrower
    assert [m.ci_low, m.ci_high] == pytest.approx([S.loc['us', 'ci_low'], S.loc['us', 'ci_high']])
    assert m.gap_low == pytest.approx(m.ci_low - 1 / 2) and m.gap_high == pytest.approx(m.ci_high - 1 / 2)   # a constant baseline: the gap is shifted


def test_geomlama_gap_is_reliable_only_where_the_interval_clears_the_baseline():
    "A model right on every question is reliably above random; one right on half (baseline 1/2) is not."
    assert geomlama_scores(_perfectly_shared([1] * 6), n_boot=200).set_index('country').loc['mean', 'gap_low'] > 0
    assert geomlama_scores(_perfectly_shared([1, 0] * 3), n_boot=200).set_index('country').loc['mean', 'gap_low'] < 0


def test_precision_interval_counts_a_question_once():
    "Two rows of one question are one unit: the same interval as one row per question (rows resampled one by one would be narrower)."
    R = pd.DataFrame(dict(country='us', q=[0, 0, 1, 1, 2, 2], hits=[1, 1, 0, 0, 1, 1], k=1, n=2))
    a, b = precision_table(R, ['country']).iloc[0], precision_table(R.drop_duplicates('q'), ['country']).iloc[0]
    assert (a.ci_low, a.ci_high, a.questions) == pytest.approx((b.ci_low, b.ci_high, 3))
    assert np.isnan(precision_table(R[R.q == 0], ['country']).ci_low.iloc[0])       # one question: no interval


def test_camel_intervals_resample_templates():
    "CAMeL intervals resample templates, each with all its sentences in every country; a single template gives none."
    from culturellm.stats import bootstrap_ci
    E = {c: {cat: [f'{c}{cat}{i}' for i in range(5)] for cat in ('food', 'drink', 'place')} for c in CAMEL_COUNTRIES}
    T = {cat: ['X [mask].', 'Y [mask].', 'Z [mask].'] for cat in E['USA']}
    I = camel_items(1, T, E, samples=4)
    O = camel_outcomes(I, [np.eye(len(o))[0] for o in I.options]).assign(outcome=lambda d: (d.template != 1).astype(float))
    S = camel_scores(O, n_boot=300).set_index(['setting', 'country', 'category'])
    units = O.groupby(['category', 'template'], sort=False).outcome.mean().to_numpy()    # every template: the same share in all six countries
    assert S.loc[(1, 'all', 'Overall'), ['ci_low', 'ci_high']].tolist() == pytest.approx(list(bootstrap_ci(units, n_boot=300)[1:]))
    assert (S.loc[(1, 'all', 'Overall'), 'templates'], S.loc[(1, 'all', 'Overall'), 'n']) == (9, 6 * 9 * 4) and set(S.ci_unit) == {'template'}
    one = camel_scores(O[O.template == 0], n_boot=100).set_index(['country', 'category'])
    assert np.isnan(one.loc[('USA', 'food'), 'ci_low']) and np.isfinite(one.loc[('USA', 'Overall'), 'value'])
    P = camel_priors(camel_outcomes(camel_items(2, T, E, samples=2), [np.eye(5)[0]] * (6 * 9 * 2)), n_boot=100)
    assert set(P.ci_unit) == {'template'} and (P[P.category == 'Overall'].templates == 9).all()

# --- the calibration ----------------------------------------------------------------------------------------

def test_calibration_reranks():
    "Country minus no-country probabilities, re-sorted: the answer can change (the original's subtraction keeps the old order)."
    pc, pn = {'a': .6, 'b': .3, 'c': .1}, {'a': .7, 'b': .1, 'c': .2}
    assert ranking(pc) == ['a', 'b', 'c'] and calibrated_ranking(pc, pn) == ['b', 'a', 'c']
    assert precision_at_k(ranking(pc), ['b']) == (0, 1) and precision_at_k(calibrated_ranking(pc, pn), ['b']) == (1, 1)
    assert list({o: pc[o] - pn[o] for o in ranking(pc)}) == ranking(pc)            # the original: a no-op
    assert calibrated_ranking({'a': .5, 'b': .5}, {'a': .2, 'b': .2}, ['b', 'a']) == ['b', 'a']   # ties: then the order shown


def test_calibrated_setting_in_results(tmp_path):
    "Through geomlama_results: every country's calibrated top answer is the one naming the country adds most to."
    head = 'question,answer,candidate_answers,context,country\n'
    (tmp_path / 'x.csv').write_text(head + ''.join(f'Q in {c}?,b,"a, b, c",ctx,{c}\n' for c in COUNTRIES))
    d, _ = check_geomlama(load_geomlama(tmp_path / 'x.csv'), 'en')
    items = geomlama_items(d, 'en')
    items['probs'] = [dict(a=.5, b=.3, c=.2) if m == 'country' else dict(a=.6, b=.1, c=.3) for m in items['mode']]
    S = geomlama_scores(geomlama_results(items, d), n_boot=100).set_index(['setting', 'country']).precision
    assert S[('country', 'mean')] == 0 and S[('calibrated', 'mean')] == 1 and S[('no_country', 'mean')] == 0


# --- the no-country rewriting -------------------------------------------------------------------------------

@pytest.mark.parametrize('q, want', [
    ('Which side do people usually keep when driving in the United States?', 'Which side do people usually keep when driving?'),
    ('Which side of the car is the driver seat in the Untied States?', 'Which side of the car is the driver seat?'),
    ('In United States, is it rare or common that customers pay tips after a meal?', 'Is it rare or common that customers pay tips after a meal?'),
    ('What was the most popular mode of transportation in the big cities of the United States 30 years back?',
     'What was the most popular mode of transportation in the big cities 30 years back?'),
    ('Which climate zone does the United States belong to?', 'Which climate zone does the country belong to?'),
    ('What time of the day American people usually take the shower?', 'What time of the day people usually take the shower?'),
    ('What is the color of the dress that Americans wear in a traditional funerals?', 'What is the color of the dress that people wear in a traditional funerals?'),
    ('Does an American wedding ceremony last for more than one day?', 'Does a wedding ceremony last for more than one day?'),
    ('In the United States, is Thanksgiving bigger than Christmas?', 'Is Thanksgiving bigger than Christmas?'),   # proper nouns keep their capitals
])
def test_remove_country_english(q, want):
    assert remove_country(q, 'en') == want


def test_remove_country_every_language(gg):
    "No rewritten question of any language still names the United States; each changed; the first letter capitalised."
    for lang in LANGUAGES:
        d = load_geomlama(gg / 'geomlama' / f'{lang}.csv')
        for q in d[d.country == 'us'].question:
            s = remove_country(q, lang)
            assert s and s != q and not re.search(US_WORDS[lang], s), (lang, q, s)
            assert s[0] == s[0].upper()
    assert remove_country('Στις Ηνωμένες Πολιτείες, ο μήνας εμφανίζεται πριν/μετά το έτος;', 'el').startswith('Ο μήνας')
    assert remove_country('美国人的主食是什么？', 'zh') == '人们的主食是什么？'


# --- data defects -------------------------------------------------------------------------------------------

def test_defects_reported(gg):
    "Greece rows asking about the US (zh hi fa sw el), the repeated Hindi candidate, Greek gold answers not among the candidates."
    kinds = {}
    for lang in LANGUAGES:
        d, D = check_geomlama(load_geomlama(gg / 'geomlama' / f'{lang}.csv'), lang, f'{lang}.csv')
        kinds[lang] = D.kind.value_counts().to_dict()
        w = D[D.kind == 'wrong_country_question']
        assert set(w.country) <= {'greece'} and d.wrong_question.sum() == len(w)
        assert d[d.wrong_question].row.tolist() == w.row.tolist()
    assert kinds == dict(en={}, zh={'wrong_country_question': 25}, hi={'wrong_country_question': 25, 'repeated_candidate': 6},
                         fa={'wrong_country_question': 25}, sw={'wrong_country_question': 25},
                         el={'wrong_country_question': 25, 'gold_repaired': 20, 'gold_not_a_candidate': 14})
    d, D = check_geomlama(load_geomlama(gg / 'geomlama' / 'el.csv'), 'el', 'el.csv')
    r = d[d.row == 4].iloc[0]
    assert r.gold == ['Αριστερά'] and r.gold_ok == ['αριστερά']
    assert all(set(g) <= set(c) for g, c in zip(d.gold_ok, d.candidates))       # every scored gold answer is a candidate
    assert match_gold('λευκό', d.candidates[d.row == 134].iloc[0]) == (None, 'unmatched')
    items = geomlama_items(d, 'el')
    items['probs'] = [dict(zip(o, np.linspace(1, 0, len(o)))) for o in items.options]
    R = geomlama_results(items, d)
    assert not R[(R.country == 'greece') & (R.setting != 'no_country')].size        # not scored with the wrong question
    scorable = d[(d.country == 'greece') & d.gold_ok.map(bool)]
    assert len(R[(R.country == 'greece') & (R.setting == 'no_country')]) == len(scorable) == 23   # two lost every gold answer


def test_bad_geomlama_file_is_one_line(tmp_path):
    f = tmp_path / 'zz.csv'
    f.write_text('question,answer,candidate_answers,context,country\n' + ''.join(f'Q,a,"a, b",c,{c}\n' for c in COUNTRIES[:5]) + 'Q,,"a, b",c,greece\n')
    with pytest.raises(ValueError, match=r"zz.csv, row 7: empty answer; expected one or more"): load_geomlama(f)
    f.write_text('question,answer,country\nQ,a,us\n')
    with pytest.raises(ValueError, match=r"zz.csv: no column 'candidate_answers'"): load_geomlama(f)


# --- CAMeL --------------------------------------------------------------------------------------------------

def _check_kinds(it, E):
    "Every option is what its kind says, and none of the wrong options is also right."
    c, cat = it.country, it.category
    assert len(set(it.options)) == len(it.options) == len(it.kinds)
    for e, k in zip(it.options, it.kinds):
        if k == 'correct': assert e in E[c][cat]
        elif k.startswith('foreign:'): assert k[8:] != c and e in E[k[8:]][cat] and e not in E[c][cat]
        elif k.startswith('category:'): assert k[9:] != cat and e in E[c][k[9:]] and e not in E[c][cat]
        elif k == 'wrong_gender': assert e in E[c][GENDER_PAIRS[cat]] and e not in E[c][cat]
        else: raise AssertionError(k)


@pytest.mark.parametrize('setting', [1, 2, 3, 4, 5])
def test_camel_invariants(gg, setting):
    "On the released entities: each setting's construction, seeded, with distinct option sets per template."
    T, E, notes = load_camel(gg / 'camel')
    assert 'sports' not in T and 'category_without_entities' in set(notes.kind)
    I = camel_items(setting, T, E, samples=3, n_templates=2, seed=7)
    assert len(I) and set(I.country) == set(CAMEL_COUNTRIES)
    for it in I.itertuples(): _check_kinds(it, E)
    for _, g in I.groupby(['country', 'category', 'template']): assert g.options.map(frozenset).nunique() == len(g)
    K = I.kinds.map(lambda k: sorted(x.split(':')[0] for x in k))
    if setting == 1:
        assert K.map(lambda k: k.count('correct') == 1 and 2 <= len(k) <= 6).all()
        assert I.kinds.map(lambda k: len({x for x in k if x != 'correct'}) == len(k) - 1).all()   # one per other country
    if setting == 2: assert I.kinds.map(lambda k: len(set(k)) == len(k) == 5 and all(x.startswith('foreign:') for x in k)).all()
    if setting == 3: assert K.map(lambda k: k == ['correct'] * 3 + ['foreign']).all()
    if setting == 4:
        assert K.map(lambda k: k == ['category'] * 3 + ['correct']).all()
        assert I.kinds.map(lambda k: len({x for x in k if x.startswith('category:')}) == 3).all()   # three different categories
    if setting == 5:
        assert set(I.category) == set(GENDER_PAIRS) and K.map(lambda k: k == ['foreign'] * 2 + ['wrong_gender'] * 2).all()
        assert I.kinds.map(lambda k: len({x for x in k if x.startswith('foreign:')}) == 2).all()    # two different countries
    again = camel_items(setting, T, E, samples=3, n_templates=2, seed=7)
    assert again.options.tolist() == I.options.tolist()
    assert camel_items(setting, T, E, samples=3, n_templates=2, seed=8).options.tolist() != I.options.tolist()


def test_camel_scores_and_chance():
    "Outcomes read off the kinds; chance levels 1/n, 3/4 and 1/2; priors sum to one per scenario."
    E = {c: {cat: [f'{c}{cat}{i}' for i in range(5)] for cat in ('food', 'drink', 'place', 'female_names', 'male_names')} for c in CAMEL_COUNTRIES}
    T = {cat: ['X [mask].'] for cat in E['USA']}
    I = pd.concat([camel_items(s, T, E, samples=2) for s in (1, 2, 4, 5)], ignore_index=True)
    pick_correct = [np.array([k == 'correct' for k in ks], float) + 1e-3 for ks in I.kinds]
    O = camel_outcomes(I, pick_correct)
    S = camel_scores(O, n_boot=100).set_index(['setting', 'country', 'category'])
    assert S.loc[(1, 'all', 'Overall'), 'value'] == 1 and S.loc[(1, 'all', 'Overall'), 'chance'] == pytest.approx(1 / 6)
    assert S.loc[(4, 'all', 'Overall'), 'value'] == 0 and S.loc[(4, 'all', 'Overall'), 'chance'] == pytest.approx(0.75)
    assert S.loc[(5, 'all', 'Overall'), 'chance'] == pytest.approx(0.5)
    P = camel_priors(O, n_boot=100)
    assert np.allclose(P[P.category == 'Overall'].groupby('scenario').share.sum(), 1) and np.allclose(P.chance, 0.2)


# --- scoring ------------------------------------------------------------------------------------------------

def test_option_probs_is_cappr():
    "The mean token log-prob of each option, prompt and option tokenised apart (CAPPr), normalised over the options."
    import torch
    from culturellm.llm import LocalLM
    lm = LocalLM('tiny-random', dtype='fp32')
    opts = ['Hamburger', 'Ugali', 'Souvlaki with pita']
    p = alpaca_prompt(f"This scenario is situated in Kenya. Tonight, we're having [BLANK] for dinner. Fill in the [BLANK].", opts)
    got = option_probs(lm, [(p, opts), (p, opts[:2])])
    def mean_lp(o):
        a, b = (lm.tok(x, add_special_tokens=False).input_ids for x in (p, o))
        with torch.inference_mode(): lp = torch.log_softmax(lm.model(torch.tensor([a + b])).logits[0].float(), -1)
        return float(np.mean([lp[len(a) - 1 + j, t] for j, t in enumerate(b)]))
    m = np.array([mean_lp(o) for o in opts])
    assert np.allclose(got[0], np.exp(m) / np.exp(m).sum(), atol=1e-4)
    assert np.allclose(got[1], np.exp(m[:2]) / np.exp(m[:2]).sum(), atol=1e-4) and np.isclose(got[0].sum(), 1)


def test_prompts_in_every_language():
    for lang in LANGUAGES:
        p = alpaca_prompt('Q?', ['x', 'y'], lang)
        assert p.endswith(ALPACA[lang]['headers'][2] + '\n') and '(A) x\n(B) y' in p


# --- the re-scorer ------------------------------------------------------------------------------------------

def _released(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_rescore_released_sample(tmp_path, gg):
    "A country file and its no-country twin in the released layout (the first two English questions), scored by hand."
    d = load_geomlama(gg / 'geomlama' / 'en.csv')
    d2 = d[d.q < 2]
    # question 1 (right, left, middle, anywhere): gold right for us, china, iran, greece; left for india, kenya
    # question 2 (right, left, front, back): gold left for us, china, iran, greece; right for india, kenya
    rk = {0: ['left', 'right', 'middle', 'anywhere'], 1: ['front', 'left', 'right', 'back']}
    none = {0: {'right': .7, 'left': .1, 'middle': .1, 'anywhere': .1}, 1: {'front': .7, 'right': .1, 'left': .1, 'back': .1}}
    for m in ('country', 'no_country'): (tmp_path / m).mkdir()
    cfile = _released(tmp_path / 'country' / 'english_results_toy_7b.csv',
                      [dict(question=r.question, options=', '.join(r.candidates), correct_answer=', '.join(r.gold), response=rk[r.q][0],
                            probabilities=str(dict(zip(rk[r.q], [0.4, 0.3, 0.2, 0.1])))) for r in d2.itertuples()])
    nfile = _released(tmp_path / 'no_country' / 'english_results_toy_7b.csv',
                      [dict(question=f'Q{q}', options=', '.join(d2[d2.q == q].candidates.iloc[0]), response=max(none[q], key=none[q].get),
                            probabilities=str(none[q])) for q in (0, 1)])
    T = rescore_geomlama([cfile, nfile], gg.parent).set_index(['mode', 'rule'])
    cols = [COUNTRY_NAMES[c] for c in COUNTRIES]
    # country: q1's top 'left' hits india and kenya; q2's top 'front' hits nobody
    assert T.loc[('country', 'released'), cols].tolist() == [0, 0, .5, 0, .5, 0]
    # no country: q1's top 'right' hits us, china, iran, greece; q2's top 'front' nobody
    assert T.loc[('no_country', 'released'), cols].tolist() == [.5, .5, 0, .5, 0, .5]
    # calibrated: q1 left (.3 - .1) still first; q2 front falls (.4 - .7), left (.3 - .1) first: hits us, china, iran, greece
    assert T.loc[('country', 'calibrated'), cols].tolist() == [.5] * 6
    assert T.loc[('country', 'random'), cols].tolist() == pytest.approx([0.25] * 6)
    f = read_released(cfile)
    assert (f['mode'], f['language'], f['model'], f['size']) == ('country', 'en', 'toy', '7')


def test_rescore_reproduces_stage_format(tmp_path, gg):
    "Our own outputs in the released format rescore to our own precision (the country and no-country settings)."
    d, _ = check_geomlama(load_geomlama(gg / 'geomlama' / 'el.csv'), 'el')
    items = geomlama_items(d, 'el', seed=4, max_questions=6)
    rng = np.random.default_rng(0)
    items['probs'] = [dict(zip(o, rng.dirichlet(np.ones(len(o))))) for o in items.options]
    ours = geomlama_scores(geomlama_results(items, d), n_boot=100)
    files = []
    for mode in ('country', 'no_country'):
        (tmp_path / mode).mkdir()
        files.append(tmp_path / mode / 'greek_results_mine.csv')
        released_frame(items, d, mode).to_csv(files[-1], index=False)
    back = rescore_geomlama(files, gg.parent).set_index(['mode', 'rule'])
    for mode in ('country', 'no_country'):
        o = ours[(ours.setting == mode) & (ours.country != 'mean')].set_index('country').precision
        assert np.allclose(back.loc[(mode, 'corrected'), [COUNTRY_NAMES[c] for c in o.index]].astype(float), o)
    assert np.isnan(back.loc[('country', 'corrected'), 'Greece'])             # the Greece rows ask about the US: not scored
    assert not np.isnan(back.loc[('country', 'released'), 'Greece'])          # ... though the released rule scores them


def test_rescore_command(tmp_path, gg, capsys):
    "`culturellm rescore geomlama FILE` prints the table; a malformed file is one line naming file and row, exit 2."
    d = load_geomlama(gg / 'geomlama' / 'en.csv')
    f = _released(tmp_path / 'english_results_toy_7b.csv',
                  [dict(question=r.question, options=', '.join(r.candidates), correct_answer=', '.join(r.gold), response=r.candidates[0],
                        probabilities=str({c: 0.0 for c in r.candidates})) for r in d.itertuples()])
    assert main(['rescore', 'geomlama', str(f), '--data-root', str(gg.parent)]) == 0
    out = capsys.readouterr().out
    assert 'english_7_country_toy' in out and 'released' in out and 'random' in out and '0.320' in out
    out_csv = tmp_path / 'table.csv'
    assert main(['rescore', 'geomlama', str(f), '--out', str(out_csv), '--json']) == 0
    assert json.loads(capsys.readouterr().out)[0]['rule'] == 'released' and out_csv.exists()
    bad = tmp_path / 'english_results_bad_7b.csv'
    pd.read_csv(f).assign(probabilities=lambda x: x.probabilities.where(x.index != 3, 'nonsense')).to_csv(bad, index=False)
    assert main(['rescore', 'geomlama', str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "english_results_bad_7b.csv, row 5: probabilities 'nonsense'" in err[0]
    anon = tmp_path / 'results.csv'; anon.write_text(f.read_text())
    assert main(['rescore', 'geomlama', str(anon)]) == 2 and 'cannot tell the language' in capsys.readouterr().err
    assert main(['rescore', 'geomlama', str(anon), '--language', 'en', '--data-root', str(gg.parent)]) == 0


# --- configuration ------------------------------------------------------------------------------------------

def test_gallery_config():
    "Profiles: smoke uses the tiny model on English and Greek; paper runs every language and the original's 50 sets; lists are checked."
    s, c, p = (get_config(x).gallery for x in ('smoke', 'cpu', 'paper'))
    assert s.model == 'tiny-random' and s.languages == ['en', 'el'] and c.languages == ['en', 'zh']
    assert p.languages == list(LANGUAGES) and p.camel_samples == 50 and p.camel_templates == 0 and p.max_questions == 0
    for G in (s, c, p): check_gallery_config(G)
    with pytest.raises(ConfigError, match="'gallery.languages': expected some of en, zh, hi, fa, sw, el, got 'de'"):
        check_gallery_config(SimpleNamespace(languages=['en', 'de'], settings=['geomlama']))
    with pytest.raises(ConfigError, match="'gallery.norm': expected one of"):
        get_config('smoke', {'gallery': {'norm': 'mean'}})


# --- translation and instruction tuning ---------------------------------------------------------------------

from culturellm.gallery import (TRANSLATION_COLUMNS, TUNING_COLUMNS, PromptTranslator, alpaca_sft, load_instructions, make_translator,
                                qe_method, qe_scores, translatable, translate_instructions, tune_config, tune_language)


class Tagger:
    "A translator that tags what it is asked to translate (and returns nothing for texts about the sky), so the bookkeeping shows."
    name = 'tagger'
    def __init__(self): self.asked = []
    def translate(self, texts, src, tgt, progress=False):
        self.asked += [(t, src, tgt) for t in texts]
        return [f"[{tgt}] {t}" if 'sky' not in t else '' for t in texts]


RECS = [dict(instruction='Explain why the sky is blue.', input='', output='Air scatters blue light more than red light.'),
        dict(instruction='Compute the product.', input='12 * 7', output='84'),
        dict(instruction='Write a Python function that doubles a number.', input='', output='def double(x):\n    return 2 * x'),
        dict(instruction='Write an HTML link.', input='', output='<a href="https://example.com">Example</a>'),
        dict(instruction='Correct the grammar.', input='She don\'t like tea.', output='She doesn\'t like tea.')]


def test_translation_keeps_code_numbers_and_empty_in_english():
    "Only translatable texts reach the translator; code, numbers, empty inputs and empty translations stay English and are counted."
    tr = Tagger()
    got, summ = translate_instructions(RECS, 'zh', tr, 'none')
    assert {t for t, _, _ in tr.asked} == {'Explain why the sky is blue.', 'Air scatters blue light more than red light.', 'Compute the product.',
                                           'Write a Python function that doubles a number.', 'Write an HTML link.', 'Correct the grammar.',
                                           "She don't like tea.", "She doesn't like tea."}
    assert all((s, t) == ('en', 'zh') for _, s, t in tr.asked)
    assert got[0]['instruction'] == RECS[0]['instruction'] and got[0]['output'].startswith('[zh] ')      # the empty translation stayed English
    assert (got[1]['input'], got[1]['output'], got[2]['output'], got[3]['output']) == ('12 * 7', '84', RECS[2]['output'], RECS[3]['output'])
    assert got[1]['english'] == ['input', 'output'] and got[0]['input'] == '' and got[0]['source'] == RECS[0]
    assert (summ['n'], summ['translated'], summ['kept_english'], summ['dropped']) == (5, 7, 5, 0) and list(summ) == TRANSLATION_COLUMNS
    assert not translatable('') and not translatable('9, 2, 7, 4') and not translatable('SELECT a FROM b;') and translatable('Width 4, height 5')


def test_roundtrip_quality_and_threshold(tmp_path):
    "Round-trip QE (back-translation's embedder cosine): a faithful round trip scores near 1, a broken one low; the threshold drops and counts."
    from culturellm.llm import CallCache, Embedder
    class Garbler(Tagger):   # forward: tags; back: restores the source, except for one instruction it garbles
        def translate(self, texts, src, tgt, progress=False):
            if tgt != 'en': return [f"[{tgt}] {t}" for t in texts]
            return ['zebra quantum marmalade' if 'grammar' in t else t[len('[zh] '):] for t in texts]
    emb = Embedder(cache=CallCache(tmp_path / 'cache'))
    got, summ = translate_instructions(RECS, 'zh', Garbler(), 'roundtrip', 0.9, emb)
    q = {r['source']['instruction']: r['qe'] for r in got}
    assert q['Compute the product.'] == pytest.approx(1, abs=1e-4) and q['Correct the grammar.'] < 0.9
    assert [r['keep'] for r in got] == [True, True, True, True, False] and summ['dropped'] == 1
    assert summ['qe_method'] == 'roundtrip' and summ['qe_lo'] <= summ['qe_mean'] <= summ['qe_hi']
    assert translate_instructions(RECS, 'zh', Garbler(), 'roundtrip', 0.0, emb)[1]['dropped'] == 0       # 0: report only
    assert qe_method('roundtrip') == 'roundtrip' and qe_method('auto') in ('cometkiwi', 'roundtrip')
    with pytest.raises(ValueError, match="qe method 'bleu'"): qe_scores('bleu', ['a'], ['b'], 'zh')


@pytest.mark.parametrize('name, text, msg', [
    ('a.json', '{"instruction": "x"', "a.json: not valid JSON (line 1"),
    ('a.json', '{"instruction": "x", "output": "y"}', "a.json: expected a JSON list of {instruction, input, output} objects, got dict"),
    ('a.json', '[{"instruction": "x", "output": "y"}, ["x"]]', "a.json, row 2: expected an object with instruction, input, output, got list"),
    ('a.json', '[{"instruction": "x", "output": "y"}, {"instruction": "", "output": "y"}]', "a.json, row 2: instruction ''; expected a non-empty string"),
    ('a.json', '[{"instruction": "x", "input": 5, "output": "y"}]', "a.json, row 1: input 5; expected a non-empty string (or empty)"),
    ('a.json', '[{"instruction": "x"}]', "a.json, row 1: output None; expected a non-empty string"),
    ('a.json', '[]', "a.json: no instructions"),
    ('b.jsonl', '{"instruction": "x", "output": "y"}\n\n{"instruction": "x", "output": 7}\n', "b.jsonl, row 3: output 7; expected a non-empty string"),
    ('b.jsonl', '{"instruction": "x", "output": "y"}\n{oops\n', "b.jsonl, row 2: not valid JSON"),
])
def test_instruction_file_errors(tmp_path, name, text, msg):
    "A malformed instruction set is one line naming the file, the row and what was expected."
    f = tmp_path / name; f.write_text(text)
    with pytest.raises(ValueError) as e: load_instructions(f)
    assert msg in str(e.value) and '\n' not in str(e.value)


def test_instruction_files_load(tmp_path):
    "JSON and JSONL load alike (a missing input is empty); the packaged set has 40 items and asks nothing GeoMLaMA or CAMeL ask."
    recs = [dict(instruction='Add.', input='1 + 1', output='2'), dict(instruction='Say hi.', output='Hi.')]
    (tmp_path / 'a.json').write_text(json.dumps(recs)); (tmp_path / 'a.jsonl').write_text('\n'.join(map(json.dumps, recs)))
    assert load_instructions(tmp_path / 'a.json') == load_instructions(tmp_path / 'a.jsonl') == [recs[0], dict(recs[1], input='')]
    assert len(load_instructions(tmp_path / 'a.json', max_items=1)) == 1
    mini = load_instructions()
    assert len(mini) == 40
    words = re.compile(r'colou?r|celsius|fahrenheit|date format|\bfood|\bdish|wedding|funeral|\bdriv|tipping|shower|\bsport|clothing|\bdress|religio|staple', re.I)
    assert not [r for r in mini if words.search(' '.join(r.values()))]


def test_template_and_loss_targets(tmp_path):
    "The Alpaca template with the language's headers up to the response header; one training step's targets are the output's tokens and EOS only."
    from transformers import TrainerCallback
    from culturellm.training import train_lora
    from culturellm.llm import LocalLM
    for lang in ALPACA:
        s = alpaca_sft(dict(instruction='I', input='X', output='O'), lang)
        h = ALPACA[lang]['headers']
        assert s['prompt'] == f"{ALPACA[lang]['preamble']}\n\n{h[0]}\nI\n\n{h[1]}\nX\n\n{h[2]}\n" and s['completion'] == 'O'
    assert alpaca_sft(dict(instruction='I', input=' ', output='O'))['prompt'].endswith('### Instruction:\nI\n\n### Response:\n')
    class Grab(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kw): self.batch = next(iter(train_dataloader))
    s = get_config('smoke')
    F = tune_config(s.finetune, s.gallery)
    assert (F.model, F.max_steps, F.r, F.alpha, F.lr) == ('tiny-random', 2, 4, 8, 3e-4)
    import dataclasses
    grab = Grab()
    sample = alpaca_sft(dict(instruction='Name a prime.', input='', output='Seven is a prime number.'), 'hi')
    train_lora(dataclasses.replace(F, batch_size=1), [sample], tmp_path / 'a', max_steps=1, callbacks=[grab])
    tok = LocalLM('tiny-random', dtype='fp32').tok
    assert tok.decode(grab.batch['targets']) == 'Seven is a prime number.' + tok.eos_token


def test_tuned_path_runs_at_smoke(tmp_path):
    "Smoke profile: translate with the prompted tiny model, tune the language's adapter, score base and tuned in one model; a rerun reuses the adapter."
    from culturellm.llm import CallCache, Embedder, LocalLM
    cfg = get_config('smoke'); G = cfg.gallery
    cache = CallCache(tmp_path / 'cache')
    lm = LocalLM(G.model, cache=cache, dtype='fp32')
    tr = make_translator(G.translator_model, lm, G.model, cache, G.translate_tokens)
    assert isinstance(tr, PromptTranslator) and tr.lm is lm
    recs = load_instructions(G.instructions_file, G.max_instructions)
    sets, summ = translate_instructions(recs, 'el', tr, 'roundtrip', G.qe_threshold, Embedder(cache=cache))
    assert summ['n'] == G.max_instructions and summ['translated'] + summ['kept_english'] == sum(bool(r[k].strip()) for r in recs for k in ('instruction', 'input', 'output'))
    F = tune_config(cfg.finetune, G)
    row = tune_language(F, sets, 'el', tmp_path, cfg.seed)
    assert set(TUNING_COLUMNS) <= set(row) and row['model'] == 'tuned-el' and row['steps'] == G.tune_steps and not row['reused']
    assert (tmp_path / 'adapters' / 'gallery' / 'el' / 'adapter_config.json').exists() and np.isfinite(row['loss_last'])
    opts = ['left', 'right', 'the middle']
    item = [(alpaca_prompt('Which side do people keep when driving?', opts, 'el'), opts)]
    base = option_probs(lm, item)[0]
    lm.load_adapter(row['adapter'], name=row['model']); tuned = option_probs(lm, item)[0]
    lm.set_adapter(None); again = option_probs(lm, item)[0]
    assert not np.allclose(base, tuned, atol=1e-7) and np.allclose(base, again)
    assert tune_language(F, sets, 'el', tmp_path, cfg.seed)['reused']
    with pytest.raises(ValueError, match="el: no instructions left to tune on"):
        tune_language(F, [dict(r, keep=False) for r in sets], 'el', tmp_path / 'x', cfg.seed)


def test_gallery_tuning_config():
    "Profiles: smoke tunes Greek on the tiny model, cpu Chinese on SmolLM2 with round-trip QE, paper every language with NLLB and CometKiwi."
    s, c, p = (get_config(x).gallery for x in ('smoke', 'cpu', 'paper'))
    assert s.tune_languages == ['el'] and c.tune_languages == ['zh'] and p.tune_languages == ['zh', 'hi', 'fa', 'sw', 'el']
    assert p.translator_model == 'facebook/nllb-200-distilled-600M' and p.qe == 'cometkiwi' and (p.tune_r, p.tune_alpha, p.tune_lr, p.tune_epochs) == (64, 16, 3e-4, 3.0)
    assert c.qe == 'roundtrip' and c.translator_model is None and 0 < c.max_instructions <= 40
    with pytest.raises(ConfigError, match="'gallery.tune_languages': expected some of en, zh"):
        check_gallery_config(SimpleNamespace(languages=['en'], settings=['geomlama'], tune_languages=['de']))
    with pytest.raises(ConfigError, match="'gallery.qe': expected one of"):
        get_config('smoke', {'gallery': {'qe': 'bleu'}})
