"""Evaluation: macro-F1 and the bootstrap against hand-computed cases and scikit-learn, every prompt family's parser on
real model replies and adversarial strings, the JSD/Wasserstein against scipy and known values, missing and malformed
data files, the registry against the data, API and local models, the results files under concurrent writers, and
the stage end to end on a run folder with adapters, held-out paraphrases and a leave-one-topic-out adapter."""
import json, math, multiprocessing as mp, os, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from culturellm.config import ConfigError, config_to_dict, get_config
from culturellm.alignment import alignment, country_similarity, js_similarity, wasserstein_ordinal
from culturellm.evaluate import (FAMILIES, ModelSpec, Task, TaskDataError, build_tasks_file, ceiling_preds,
                                 collect_results, compat_parse, culture_tasks, cut_texts, encode, family_of,
                                 load_tasks, macro_f1, macro_f1_codes, majority_baseline, paired_scores,
                                 plan_models, predict_tasks, prepare_items, random_baseline, read_task, score_items,
                                 score_table, skipped_rows, strict_parse, stratified_sample, task_options, task_scores, task_status,
                                 text_sources, text_units, write_results)
from culturellm.seeds import CULTURES, load_cultures
from culturellm.stats import bootstrap_ci, paired_bootstrap

REPO = Path(__file__).resolve().parents[1]
TASKS = load_tasks()
BY = {t.key: t for t in TASKS}


# ------------------------------------------------------------------ metrics and the bootstrap

def test_macro_f1_hand_computed():
    "Per-label F1 = 2TP / (2TP + FP + FN), 0 for a label neither predicted nor gold, averaged over the label set."
    # OFF: TP 1, FP 1, FN 0 -> 2/3; NOT: TP 1, FP 0, FN 2 (one OFF, one unparsed) -> 1/2
    assert macro_f1(['OFF', 'NOT', 'NOT', 'NOT'], ['OFF', 'OFF', 'NOT', None], ['OFF', 'NOT']) == pytest.approx((2/3 + 1/2) / 2)
    assert macro_f1(['a', 'a', 'b'], ['a', 'a', 'a'], ['a', 'b', 'c']) == pytest.approx(0.8 / 3)   # c: no gold, no prediction -> 0
    assert macro_f1(['NOT'] * 5, ['NOT'] * 5, ['OFF', 'NOT']) == 0.5                              # one gold class caps at 1/2
    assert macro_f1(['ind', 'non', 'non'], ['indv', 'non', 'non'], ['non', 'indv']) == pytest.approx(0.5 * (2 * 2 / (2 + 2)))  # 'ind' is never 'indv'
    assert macro_f1(['x'], ['x'], ['a', 'b']) == 0.0                                            # gold and prediction outside the set


def test_macro_f1_is_sklearn_f1_score():
    "On random cases (labels absent from predictions or gold, labels outside the set, None) it is sklearn's f1_score(average='macro')."
    from sklearn.metrics import f1_score
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for _ in range(500):
            L = list('abcdefg'[:rng.integers(1, 8)]); pool = L + ['x', 'y']
            n = int(rng.integers(1, 40))
            g, p = rng.choice(pool, n).tolist(), rng.choice(pool, n).tolist()
            assert macro_f1(g, p, L) == pytest.approx(f1_score(g, p, labels=L, average='macro'), abs=1e-12)


def test_bootstrap_of_macro_f1_hand_computed():
    "The interval is the percentile interval of macro-F1 over resamples drawn exactly as written out here; perfect predictions have no spread."
    g, p = np.array([0, 0, 1, 1, 1, 0, 1, 0]), np.array([0, 1, 1, 1, 0, 0, 1, 1])
    stat = lambda a, b: macro_f1_codes(a, b, 2)
    v, lo, hi = bootstrap_ci((g, p), stat, n_boot=300, seed=7)
    idx = np.random.default_rng(7).integers(0, len(g), size=(300, len(g)))
    boots = [stat(g[i], p[i]) for i in idx]
    assert v == stat(g, p) == pytest.approx((2 * 2 / (3 + 4) + 2 * 3 / (5 + 4)) / 2)   # class 0: TP 2, 3 predicted, 4 gold; class 1: TP 3, 5, 4
    assert (lo, hi) == pytest.approx(tuple(np.percentile(boots, [2.5, 97.5])))
    assert bootstrap_ci((g, g), stat, 200)[1:] == (1.0, 1.0)
    d = paired_bootstrap((g, p), (g, p), stat, 200)
    assert (d['diff'], d['low'], d['high'], d['p']) == (0.0, 0.0, 0.0, 1.0)
    d = paired_bootstrap((g, p), (g, g), stat, 500)
    assert d['diff'] == pytest.approx(1 - stat(g, p)) and d['low'] > 0 and d['p'] < 0.05


def test_baselines_and_ceiling():
    "Majority class and uniform random (closed form vs simulation), and the ceiling through each parser, as the registry records them."
    g = np.array([0] * 90 + [1] * 10)
    f1, acc = majority_baseline(g, 2)
    assert (f1, acc) == (pytest.approx(0.5 * 2 * 90 / 190), 0.9)
    sim = np.random.default_rng(0).integers(0, 2, (4000, 100))
    assert random_baseline(g, 2)[0] == pytest.approx(np.mean([macro_f1_codes(g, s, 2) for s in sim]), abs=0.01)
    for key, full, compat in (('turkish:offensive_detect_finegrained', 1.0, 0.8), ('arabic:hate_detect_fine-grained', 1.0, 0.2067),
                              ('english:offensive_detect_easy', 0.5, 0.5)):
        t = BY[key]
        gold = [t.label_fixes.get(l, l) for l, c in t.label_distribution.items() for _ in range(c)]
        raw = [l for l, c in t.label_distribution.items() for _ in range(c)]
        assert macro_f1(gold, ceiling_preds(gold, t), list(t.labels)) == pytest.approx(full, abs=1e-4), key
        assert macro_f1(raw, ceiling_preds(raw, t, 'compat'), list(t.labels)) == pytest.approx(compat, abs=1e-4), key
        assert t.ceiling_compat == pytest.approx(compat, abs=1e-4)


def test_task_scores_and_paired_difference():
    "Score rows carry n, baselines, ceiling, interval and the unparseable rate; the paired row is tuned minus base on shared items."
    t = BY['arabic:offensive_detect']
    base = pd.DataFrame(dict(item_id=range(10), gold=['NOT'] * 7 + ['OFF'] * 3, pred=['NOT'] * 10, parsed=True))
    tuned = base.assign(pred=['NOT'] * 6 + ['OFF'] + ['OFF'] * 2 + [None], parsed=[True] * 9 + [False])
    r = {x['metric']: x for x in task_scores(tuned, t, 'generate', 300)}
    assert r['macro_f1']['n'] == 10 and r['unparseable']['value'] == pytest.approx(0.1)
    assert r['macro_f1']['majority_baseline'] == pytest.approx(macro_f1(base.gold, base.pred, ['OFF', 'NOT']))
    assert r['macro_f1']['ceiling'] == 1.0 and r['macro_f1']['ci_low'] <= r['macro_f1']['value'] <= r['macro_f1']['ci_high']
    d = paired_scores(base, tuned, t, 300)
    assert d['value'] == pytest.approx(r['macro_f1']['value'] - macro_f1(base.gold, base.pred, ['OFF', 'NOT'])) and d['n'] == 10



def test_repeated_texts_are_one_unit():
    "Items repeating a text are resampled together: the interval of the distinct texts alone, not the narrower one of every copy."
    t = BY['arabic:offensive_detect']
    p = pd.DataFrame(dict(item_id=range(10), gold=['NOT'] * 7 + ['OFF'] * 3, pred=['NOT'] * 6 + ['OFF'] * 4, parsed=True))
    twice = pd.concat([p, p.assign(item_id=p.item_id + 10)], ignore_index=True)             # every text on two lines
    units = text_units(pd.DataFrame(dict(item_id=range(20), text=[f'text {i % 10}' for i in range(20)])))
    one, two, naive = ({x['metric']: x for x in task_scores(d, t, 'generate', 400, units=u)} for d, u in ((p, None), (twice, units), (twice, None)))
    for m in ('macro_f1', 'accuracy'):
        assert [two[m][k] for k in ('value', 'ci_low', 'ci_high')] == pytest.approx([one[m][k] for k in ('value', 'ci_low', 'ci_high')])
    assert (one['macro_f1']['ci_unit'], two['macro_f1']['ci_unit'], naive['macro_f1']['ci_unit']) == ('item', 'distinct text', 'item')
    assert naive['accuracy']['ci_high'] - naive['accuracy']['ci_low'] < two['accuracy']['ci_high'] - two['accuracy']['ci_low']
    d1, d2 = paired_scores(p, p.assign(pred='NOT'), t, 400), paired_scores(twice, twice.assign(pred='NOT'), t, 400, units=units)
    assert (d2['ci_low'], d2['ci_high'], d2['ci_unit']) == (pytest.approx(d1['ci_low']), pytest.approx(d1['ci_high']), 'distinct text')


def test_score_table_names_units_and_text_sources():
    "score_table: the unit of each interval (`ci_unit`) and the group of tasks sharing texts (`text_source`) on every scored row."
    ts = [BY['arabic:hate_detect_mp'], BY['arabic:spam_detect'], BY['arabic:vulgar_detect_mp']]
    items = {ts[0].key: pd.DataFrame(dict(item_id=[0, 1, 2, 3], text=['a', 'b', 'a', 'c'])),
             ts[1].key: pd.DataFrame(dict(item_id=[0, 1, 2], text=['x', 'y', 'z'])),
             ts[2].key: pd.DataFrame(dict(item_id=[0, 1, 2], text=['a', 'b', 'd']))}
    pred = pd.concat([pd.DataFrame(dict(model=m, task=t.task, item_id=items[t.key].item_id, gold=t.labels[0], pred=t.labels[k % 2], parsed=True))
                      for m in ('base', 'tuned') for k, t in enumerate(ts)], ignore_index=True)
    src = text_sources({t.task: items[t.key].text for t in ts})
    assert src == {'hate_detect_mp': 'hate_detect_mp', 'spam_detect': 'spam_detect', 'vulgar_detect_mp': 'hate_detect_mp'}
    S = score_table(pred, ts, {t.key: dict(empty_gold=0, no_text=0) for t in ts}, 'logprobs', 200, items=items, sources=src)
    u = S[S.ci_low.notna()].drop_duplicates('task').set_index('task')
    assert u.ci_unit.to_dict() == {'hate_detect_mp': 'distinct text', 'spam_detect': 'item', 'vulgar_detect_mp': 'item'}
    assert set(S[S.metric == 'macro_f1_vs_base'].ci_unit) == {'distinct text', 'item'} and S.text_source.map(src.get).notna().all()
    assert S.groupby('task').text_source.first().to_dict() == src


def test_tasks_sharing_texts_in_the_data(data_root):
    "The real sets: the six Spanish DETOXIS tasks are one text source; Korean hate_detect_6 repeats 253 of its texts."
    es = [t for t in TASKS if t.culture == 'spanish' and task_status(t, data_root) == 'ok']
    if len(es) < 11: pytest.skip('Spanish sets not all present')
    src = text_sources({t.task: read_task(t, data_root).text for t in es})
    detoxis = ('stereotype_detect', 'improper_detect', 'insult_detect', 'mockery_detect', 'aggressiveness_detect', 'negative_stance_detect')
    assert {src[k] for k in detoxis} == {'stereotype_detect'} and len(set(src.values())) == 6
    u = text_units(read_task(BY['korean:hate_detect_6'], data_root))
    assert (len(u), len(set(u.values()))) == (1000, 747)

# ------------------------------------------------------------------ parsers

# Greedy replies of SmolLM2-135M-Instruct to this module's prompts on real items (captured with `score_items(..., 'generate')`).
REAL = {
    'offensive': ['The text is not offensive. It is a common Arabic phrase that means "to'],
    'hate': ['The text contains hate speech.', 'HS: يا مُعين الصّاب'],
    'hate_finegrained': ['The text contains hate speech against the following categories:\n\n1. Race\n2', 'شركة الأخصريخ',
                         'The text contains hate speech, and it is not against the religion of Allah ('],
    'spam': ['The text is spam. The answer is not "NOT_Spam" but'],
    'vulgar': ['The text contains vulgar language.', 'Vulgar: "Vulgar"\n\nThe text contains vulgar language'],
    'entity_binary': ['The text contains a threat.'],
    'expressing_binary': ['1. The text is not expressing gender bias.\n2. The text is'],
    'hate_offens_3class': ["The text is indeed offensive language that is not hate speech. It's a classic"],
    'hof': ['Yes, the text contains hate speech and offensive content.'],
    'offensive_finegrained': ['The text is not offensive, but it is a reference to a Turkish term that'],
}
# what the original's parser makes of them: mostly wrong, which is why it is only `compat`
REAL_COMPAT = {
    'offensive': [('NOT', True)], 'hate': [('The text contains hate speech.', False), ('HS', True)],
    'hate_finegrained': [('HS1', True), ('شركة الأخصريخ', False), ('NOT_HS', True)], 'spam': [('Ham', True)],
    'vulgar': [('V', True), ('V', True)], 'entity_binary': [('The text contains a threat.', False)],
    'expressing_binary': [('1', True)], 'hate_offens_3class': [('2', False)],
    'hof': [('Yes, the text contains hate speech and offensive content.', False)], 'offensive_finegrained': [('non', True)],
}


@pytest.mark.parametrize('family', sorted(REAL))
def test_parsers_on_real_replies(family):
    "The strict parser accepts none of the small model's chatty replies; the original's parser reads them as its rules say."
    opts = list(FAMILIES[family].options)
    assert [strict_parse(r, opts) for r in REAL[family]] == [None] * len(REAL[family])
    assert [compat_parse(r, family) for r in REAL[family]] == REAL_COMPAT[family]


@pytest.mark.parametrize('family', [f for f in FAMILIES if f != 'raw'])
def test_strict_parser_on_adversarial_strings(family):
    "Each option as written, with quotes, case, spacing and a full stop, parses to itself; option-plus-words, both options, or noise never parse."
    opts = list(FAMILIES[family].options)
    for i, o in enumerate(opts):
        for r in (o, f' "{o}". ', o.lower(), f"'{o.upper()}'\n", o.replace('_', ' '), f'**{o}**'):
            assert strict_parse(r, opts) == i, (r, opts)
        for r in (f'{o} because it is', f'The answer is {o}', f'{o} / {opts[(i + 1) % len(opts)]}', f'no {o}', f'{o}!?x'):
            assert strict_parse(r, opts) is None, (r, opts)
    for r in ('', None, '   ', '...', '\u200b', 'NOTOFF_', 'ΟFF', '１'):   # empty, punctuation, Greek omicron, full-width digit
        got = strict_parse(r, opts)
        assert got is None or (r == '１' and opts[got] == '1'), (r, got)   # NFKC: a full-width 1 is a 1


def test_compat_parser_adversarial():
    "The original's substring rules: first match wins, 'no' inside words counts, unreadable is class 2 on the 3-class task."
    assert compat_parse('Nothing offensive', 'offensive') == ('NOT', True)
    assert compat_parse('offensive', 'offensive') == ('OFF', True)
    assert compat_parse('I know it is spam', 'spam') == ('Ham', True)          # "know" contains "no"
    assert compat_parse('HS6', 'hate_finegrained') == ('HS1', True)
    assert compat_parse('', 'hate_offens_3class') == ('2', False)
    assert compat_parse(None, 'hate') == ('', False)
    assert compat_parse('Definitely 0, not 1', 'entity_binary') == ('1', True)   # "1" is tested first


# ------------------------------------------------------------------ WVS distances

def test_jsd_and_wasserstein_against_scipy():
    "1 − JSD (log 2) equals 1 − scipy's jensenshannon(base=2); the Wasserstein distance equals scipy's on scale points, over the span."
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance
    rng = np.random.default_rng(1)
    for k in (2, 3, 4, 5, 10):
        for _ in range(100):
            a, b = rng.dirichlet(np.full(k, 0.3)), rng.dirichlet(np.full(k, 0.3))
            assert js_similarity(a, b) == pytest.approx(1 - jensenshannon(a, b, base=2), abs=1e-9)
            assert wasserstein_ordinal(a, b) == pytest.approx(wasserstein_distance(range(k), range(k), a, b) / (k - 1), abs=1e-9)


def test_jsd_and_wasserstein_known_values():
    "Identical → 1 and 0; disjoint → 0 and (gap/span); a point mass against a fair coin: JSD² = 3/2 − (3/4)·log2 3."
    assert js_similarity([0.2, 0.8], [2, 8]) == 1.0 and wasserstein_ordinal([0.2, 0.8], [0.2, 0.8]) == 0.0
    assert js_similarity([1, 0, 0], [0, 0, 1]) == 0.0
    assert 1 - js_similarity([1, 0], [0.5, 0.5]) == pytest.approx(math.sqrt(1.5 - 0.75 * math.log2(3)))
    assert wasserstein_ordinal([1, 0, 0, 0, 0], [0, 0, 0, 0, 1]) == 1.0
    assert wasserstein_ordinal([1, 0, 0, 0, 0], [0, 1, 0, 0, 0]) == 0.25
    assert wasserstein_ordinal([0.5, 0, 0.5], [0, 1, 0]) == pytest.approx(0.5)   # JSD calls these disjoint; Wasserstein sees them close
    with pytest.raises(ValueError, match='no mass'): js_similarity([0, 0], [1, 0])


def test_survey_alignment_and_whose_values():
    "Each culture's own survey is the most similar country to itself; alignment of a survey with itself is 1."
    from culturellm.alignment import survey_targets
    from culturellm.seeds import load_embedded_counts, load_questions
    Q, C = load_questions(), load_embedded_counts()
    for name in ('english', 'german', 'korean', 'turkish'):
        t = survey_targets(C, CULTURES[name].countries, Q)
        assert alignment(t, t, 100)['similarity'] == 1.0
        assert country_similarity(t, C, Q).country[0] == CULTURES[name].countries[0]


# ------------------------------------------------------------------ registry and data files

def test_registry_and_its_builder(tmp_path):
    """The shipped registry holds the 59 tasks over the nine cultures, each routed to its prompt family; `build_tasks_file`
    turns a task table's entries into registry records (a gold-label typo becomes a fix, a public source is kept)."""
    assert len(TASKS) == 59 and {t.culture for t in TASKS} == set(CULTURES)
    assert all(family_of(t.task) == t.family for t in TASKS if t.family != 'raw')
    entry = dict(culture='arabic', task='offensive_detect', paper_task='Offensive language detection', paper_dataset='X',
                 path='Arabic/X/x.jsonl', n=3, text_field='tweet', label_field='label', labels=['OFF', 'NOT'],
                 label_distribution={'OFF': 1, 'NOT': 1, 'O': 1}, gold_labels_outside_metric_label_set=['O'], prompt_family='offensive',
                 majority_class_macro_f1=0.4, oracle_macro_f1=1.0, oracle_macro_f1_through_released_parser=0.9,
                 notes='Public source: example.org/x (v1)', missing=False)
    reg = json.loads(build_tasks_file_at(tmp_path, [entry]).read_text())
    r = reg['tasks'][0]
    assert (r['family'], r['label_fixes'], r['source'], r['ceiling_compat']) == ('offensive', {'O': 'OFF'}, 'example.org/x (v1)', 0.9)
    shipped = json.loads((REPO / 'culturellm' / 'data' / 'tasks.json').read_text())
    assert set(r) == set(shipped['tasks'][0]) and reg['source'] == shipped['source']


def build_tasks_file_at(d, entries):
    "Write `entries` as a task table in `d` and build a registry from it."
    (d / 'table.json').write_text(json.dumps(entries))
    return build_tasks_file(d / 'table.json', d / 'tasks.json')


def test_every_present_file_reads(data_root):
    "All 58 present files read without error; rows, exclusions and label counts match the registry; CValues is a visible skip."
    for t in TASKS:
        if t.missing:
            s = task_status(t, data_root)
            assert s.startswith('skipped: missing data') and 'X-PLUG/CValues' in s
            continue
        df = read_task(t, data_root)
        assert len(df) == t.n, t.key
        assert df.gold.value_counts().to_dict() == t.label_distribution, t.key
        items, c = prepare_items(df, t)
        assert c['empty_gold'] == t.label_distribution.get('', 0) and set(items.gold) <= set(t.labels), t.key
    c = prepare_items(read_task(BY['korean:hate_detect_6'], data_root), BY['korean:hate_detect_6'])[1]
    assert (c['empty_gold'], c['items']) == (218, 782)
    c = prepare_items(read_task(BY['turkish:offensive_detect_finegrained'], data_root), BY['turkish:offensive_detect_finegrained'])[1]
    assert c['relabelled'] == 102


def _task(tmp_path, lines, **kw):
    p = tmp_path / 'set.jsonl'
    p.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return Task('english', 'hate_detect', 'demo', str(p), kw.pop('text_field', 'data'), 'label', ('HS', 'NOT_HS'), 'hate', **kw)


@pytest.mark.parametrize('lines,msg', [
    (['{"data": "a", "label": "HS"}', '{"data": "b", "label": "HS",}'], 'set.jsonl, line 2: not valid JSON'),
    (['["a", "HS"]'], 'set.jsonl, line 1: expected a JSON object, got list'),
    (['{"data": "a", "label": "HS"}', '', '{"text": "b", "label": "HS"}'], "set.jsonl, line 3: no text key 'data' (keys: text, label)"),
    (['{"data": "a", "lab": "HS"}'], "set.jsonl, line 1: no label key 'label' (keys: data, lab)"),
    (['{"data": "a", "label": "OFF"}'], "set.jsonl, line 1, key 'label': label 'OFF' is not in the label set HS, NOT_HS"),
    (['{"data": "a", "label": 1.5}'], "set.jsonl, line 1, key 'label': label 1.5 is not a string or integer"),
    (['', '  '], 'set.jsonl: no records'),
])
def test_malformed_files_are_one_line_errors(tmp_path, lines, msg):
    "A malformed file stops with one line naming the file, line and key."
    with pytest.raises(TaskDataError) as e: read_task(_task(tmp_path, lines), None)
    assert msg in str(e.value) and '\n' not in str(e.value)


def test_missing_file_is_a_visible_skip(tmp_path):
    "A missing file (or no data root) is a 'skipped: missing data' row that says where to get it, never a crash or a gap."
    t = Task('english', 'hate_detect', 'demo', 'English/none.jsonl', 'data', 'label', ('HS', 'NOT_HS'), 'hate', source='example.org/set')
    assert task_status(t, tmp_path) == f"skipped: missing data ({tmp_path / 'culturellm' / 'English/none.jsonl'} not found; get it from example.org/set)"
    assert task_status(t, None).startswith('skipped: no data root')
    rows = skipped_rows('english', [t], tmp_path, [ModelSpec('One', 'm', skipped='no adapter at x')], 'logprobs')
    assert rows.status.tolist() == [task_status(t, tmp_path), 'skipped: no adapter at x'] and rows.value.isna().all()
    with pytest.raises(TaskDataError, match='not found'): read_task(t, tmp_path)


def test_known_defects_and_exclusions(tmp_path):
    "Known outside labels are accepted and relabelled (not under compat); empty gold labels and texts are excluded and counted."
    t = _task(tmp_path, ['{"data": "a", "label": "ind"}', '{"data": "b", "label": ""}', '{"data": null, "label": "HS"}',
                         '{"data": "c", "label": "HS"}', '{"data": "dddd", "label": "NOT_HS"}'], outside=('ind',), label_fixes={'ind': 'HS'})
    items, c = prepare_items(read_task(t, None), t)
    assert (c['rows'], c['empty_gold'], c['no_text'], c['relabelled'], c['items']) == (5, 1, 1, 1, 3)
    assert items.gold.tolist() == ['HS', 'HS', 'NOT_HS'] and items.item_id.tolist() == [1, 4, 5]
    cut, n = cut_texts(items, 2)
    assert n == 1 and cut.text.tolist() == ['a', 'c', 'dd'] and cut_texts(items, 0)[0] is items
    assert prepare_items(read_task(t, None), t, fix=False)[0].gold.tolist()[0] == 'ind'


def test_a_cultures_own_test_set(tmp_path):
    "A culture added in a cultures file brings its own test set: the family from its name, the text key found."
    (tmp_path / 'mine.jsonl').write_text('{"text": "you are great", "label": "NOT"}\n{"text": "idiot", "label": "OFF"}\n')
    (tmp_path / 'c.yaml').write_text('- {name: greek, countries: [GRC], language: Greek, test_sets: {offensive_detect_gr: mine.jsonl}}\n')
    C = load_cultures(tmp_path / 'c.yaml')['greek']
    (t,) = culture_tasks(C, TASKS)
    assert (t.family, t.labels, t.user) == ('offensive', ('OFF', 'NOT'), True)
    assert read_task(t, None).text.tolist() == ['you are great', 'idiot']
    with pytest.raises(ConfigError, match="no prompt family"): family_of('sarcasm_check')


def test_stratified_sample():
    "Proportional per class, at least one of each where the cap allows, seeded per task, everything at 0."
    g = ['NOT'] * 800 + ['OFF'] * 150 + ['X'] * 50
    s = stratified_sample(g, 100, 0, 'a')
    assert pd.Series(np.array(g)[s]).value_counts().to_dict() == {'NOT': 80, 'OFF': 15, 'X': 5}
    assert list(s) == list(stratified_sample(g, 100, 0, 'a')) and list(s) != list(stratified_sample(g, 100, 1, 'a'))
    small = np.array(['a'] * 98 + ['b', 'c'])
    assert pd.Series(small[stratified_sample(small, 3)]).value_counts().to_dict() == {'a': 1, 'b': 1, 'c': 1}
    assert len(stratified_sample(g, 0)) == 1000


# ------------------------------------------------------------------ models

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    from culturellm.llm import LocalLM, resolve_model
    return LocalLM(resolve_model('tiny-random')[0], dtype='fp32')


def test_scoring_modes_on_a_local_model(tiny):
    "logprobs gives probabilities over the label set for every item; generate and compat report what they could not parse."
    t = BY['english:hate_offens_detect']
    from culturellm.evaluate import task_messages
    prompts = [task_messages(t, x, CULTURES['english']) for x in ('you are nice', 'go away')]
    lp = score_items(tiny, prompts, t, 'logprobs', '<|im_end|>\n')
    assert all(r['parsed'] and set(r['probs']) == {'0', '1', '2'} and abs(sum(r['probs'].values()) - 1) < 1e-6 for r in lp)
    assert [r['pred'] for r in lp] == [max(r['probs'], key=r['probs'].get) for r in lp]
    gen = score_items(tiny, prompts, t, 'generate', max_tokens=4)
    assert all(r['reply'] is not None and r['parsed'] == (r['pred'] is not None) for r in gen)
    cp = score_items(tiny, prompts, t, 'compat', max_tokens=4)
    assert all(r['pred'] in ('0', '1', '2') for r in cp)                       # the original's fallback: class 2
    with pytest.raises(ConfigError, match="evaluate.scoring"): score_items(tiny, prompts, t, 'sample')


def test_an_api_model_without_logprobs():
    "An extra model behind an OpenAI-compatible server without log-probabilities: constrained choices, unparsed replies counted."
    from culturellm.api import ScriptedServer, make_backend
    t = BY['arabic:offensive_detect']
    replies = iter(['NOT_OFF', 'OFF', 'I think it is fine'] * 10)
    def reply(path, body):
        return next(replies) if 'chat' in path else 'x'
    with ScriptedServer(reply=reply) as srv:
        lm = make_backend('gpt-test', srv.url, cache=None, score_mode='constrained', workers=1)
        items = {t.key: pd.DataFrame(dict(item_id=[1, 2, 3], text=['a', 'b', 'c'], gold=['NOT', 'OFF', 'OFF']))}
        p = predict_tasks(lm, ModelSpec('gpt-test', 'gpt-test', base_url=srv.url), CULTURES['arabic'], [t], items, progress=False)
    assert p.pred.tolist() == ['NOT', 'OFF', None] and p.parsed.tolist() == [True, True, False]
    r = {x['metric']: x['value'] for x in task_scores(p, t, 'logprobs', 200)}
    assert r['unparseable'] == pytest.approx(1 / 3) and r['accuracy'] == pytest.approx(2 / 3)


def test_plan_models(tmp_path):
    "Base, base+context, the culture's adapter, One and extras; what is not there is skipped with the reason."
    (tmp_path / 'adapters' / 'arabic').mkdir(parents=True); (tmp_path / 'adapters' / 'arabic' / 'adapter_config.json').write_text('{}')
    cfg = get_config('smoke', {'evaluate': {'extra_models': ['gpt-4o'], 'extra_base_url': 'http://127.0.0.1:1/v1'}})
    ms = plan_models(tmp_path, 'arabic', cfg.evaluate, cfg.finetune)
    assert [m.label for m in ms] == ['base', 'base+context', 'arabic', 'One', 'gpt-4o']
    assert [bool(m.skipped) for m in ms] == [False, False, False, True, False] and 'adapters/one' in ms[3].skipped
    assert ms[-1].base_url == 'http://127.0.0.1:1/v1'


# ------------------------------------------------------------------ results files

def _writer(args):
    run, c = args
    p = pd.DataFrame(dict(culture=c, model='base', task='t', item_id=range(50), gold='0', pred='1', parsed=True, reply='', probs=''))
    write_results(run, c, predictions=p, scores=pd.DataFrame(dict(culture=[c], value=[0.5])))
    collect_results(run)


def test_results_under_concurrent_cultures(tmp_path):
    "Cultures finishing at the same time each write their own files; the combined files end complete, with no temporary left."
    cs = [f'c{i}' for i in range(6)]
    with mp.get_context('spawn').Pool(3) as pool: pool.map(_writer, [(str(tmp_path), c) for c in cs])
    P = pd.read_csv(tmp_path / 'results' / 'predictions.csv', dtype=str)
    assert sorted(P.culture.unique()) == cs and len(P) == 300 and P.gold.eq('0').all()
    assert not [f for f in os.listdir(tmp_path / 'results') if f.endswith('.tmp')]


# ------------------------------------------------------------------ the stage end to end

def _fake_run(run: Path, cfg):
    "A run folder as the earlier stages leave it: config, augmented questions, and random LoRA adapters for arabic and One."
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from culturellm.config import atomic_write_json, write_jsonl
    from culturellm.llm import resolve_model
    from culturellm.seeds import load_questions
    atomic_write_json(run / 'config.json', config_to_dict(cfg))
    qs = load_questions()
    write_jsonl(run / 'data' / 'augment_step1.jsonl', [dict(q_id=q.id, text=f'In your view: {q.text}', step=1, status='kept') for q in qs])
    write_jsonl(run / 'data' / 'augmented.jsonl', [dict(q_id=q.id, text=f'Tell me, {q.text}', step=2, status='kept') for q in qs])
    from culturellm.seeds import CULTURES, stage_answers
    ans = stage_answers(run, CULTURES['arabic'], cfg, required=False)      # the seeds stage's answers file
    atomic_write_json(run / 'data' / 'answers' / 'arabic.json', dict(culture='arabic', answers={str(k): v for k, v in ans.items()}))
    torch.manual_seed(0)
    for name in ('arabic', 'one'):
        m = AutoModelForCausalLM.from_pretrained(resolve_model('tiny-random')[0])
        pm = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=['q_proj', 'v_proj'], init_lora_weights=False))
        pm.save_pretrained(run / 'adapters' / name)


def test_stage_end_to_end(tmp_path, data_root, monkeypatch):
    """The evaluate and alignment notebooks on a run folder: base, base+context, the culture's adapter and One on the same items, paired
    differences, WVS alignment on seed questions, held-out paraphrases and a held-out topic, the files, the records and the figures."""
    import papermill as pm
    monkeypatch.setenv('CULTURELLM_DATA', str(data_root))
    run = tmp_path / 'run'
    cfg = get_config('smoke', {'evaluate': {'max_items': 4, 'n_boot': 100, 'heldout_topic': 'RELIGIOUS VALUES',
                                            'tasks': ['hate_detect_mp', 'spam_detect', 'vulgar_detect_mp']},
                               'finetune': {'max_steps': 2, 'eval_items': 12}})
    _fake_run(run, cfg)
    for nb in ('03_evaluate', '03b_alignment'):   # the downstream tasks, then the survey
        pm.execute_notebook(str(REPO / 'nbs' / f'{nb}.ipynb'), str(tmp_path / f'{nb}.ipynb'), cwd=str(REPO / 'nbs'), progress_bar=False,
                            parameters=dict(culture='arabic', profile='smoke', run_dir=str(run), config_file=str(run / 'config.json')))
    rec = json.loads((run / 'records' / 'evaluate' / 'arabic.json').read_text())
    assert [(m['label'], m['status']) for m in rec['models']] == [('base', 'ok'), ('base+context', 'ok'), ('arabic', 'ok'), ('One', 'ok')]
    P = pd.read_csv(run / 'results' / 'predictions.csv', dtype=str, keep_default_na=False)
    assert set(P.model) == {'base', 'base+context', 'arabic', 'One'} and P.groupby('model').size().tolist() == [12] * 4
    assert len(P.groupby(['task', 'item_id'])) == 12                              # the same items for every model
    assert all(abs(sum(json.loads(x).values()) - 1) < 1e-4 for x in P.probs)
    S = pd.read_csv(run / 'results' / 'scores.csv')
    assert set(S[S.metric == 'macro_f1_vs_base'].model) == {'base+context', 'arabic', 'One'}
    f1 = S[(S.metric == 'macro_f1') & (S.status == 'ok')]
    assert f1[['n', 'majority_baseline', 'random_baseline', 'ceiling', 'ci_low', 'ci_high']].notna().all().all()
    wv = S[S.metric == 'wvs_1-jsd']
    assert {'WVS: seed questions (trained)', 'WVS: held-out paraphrases', 'WVS: held-out topic: RELIGIOUS VALUES'} == set(wv.task)
    assert {'uniform', 'all-countries average', 'survey: english'} <= set(wv.model)
    assert {'base', 'arabic'} <= set(wv[wv.task == 'WVS: held-out topic: RELIGIOUS VALUES'].model)   # arabic: its recipe trained without the topic
    assert 'One' not in set(wv[wv.task == 'WVS: held-out topic: RELIGIOUS VALUES'].model)          # a model that saw the topic has no row there
    assert wv[wv.task == 'WVS: held-out topic: RELIGIOUS VALUES'].n.max() == 2
    assert set(f1.ci_unit) <= {'item', 'distinct text'} and set(S[S.metric.str.startswith('wvs') & S.ci_low.notna()].ci_unit) == {'seed question'}
    src = f1.drop_duplicates('task').set_index('task').text_source                 # the two Multi-Platform sets share 675 texts
    assert (src['hate_detect_mp'], src['vulgar_detect_mp'], src['spam_detect']) == ('hate_detect_mp', 'hate_detect_mp', 'spam_detect')
    assert (run / 'adapters' / 'arabic-without-religious-values' / 'adapter_config.json').exists()
    assert (run / 'figures' / 'evaluate_arabic_tasks.png').stat().st_size > 5000
    for f in ('wvs', 'values', 'value_map'): assert (run / 'figures' / f'alignment_arabic_{f}.png').stat().st_size > 5000
    assert json.loads((run / 'records' / 'alignment' / 'arabic.json').read_text())['heldout_topic'] == 'RELIGIOUS VALUES'
    V = pd.read_csv(run / 'results' / 'values_arabic.csv')
    assert set(V.model) == {'base', 'arabic', 'One'} and V.groupby('model').size().unique().tolist() == [11]



def test_stage_needs_the_seeds_answers_in_a_run_folder(tmp_path, data_root, monkeypatch):
    "The held-out-topic adapter trains on the seeds stage's answers (`stage_answers`): in a run folder without its file the stage stops, naming it."
    import papermill as pm
    monkeypatch.setenv('CULTURELLM_DATA', str(data_root))
    run = tmp_path / 'run'
    cfg = get_config('smoke', {'evaluate': {'max_items': 2, 'n_boot': 100, 'heldout_topic': 'RELIGIOUS VALUES', 'tasks': ['spam_detect'],
                                            'models': ['base'], 'context': False}, 'finetune': {'max_steps': 1, 'eval_items': 4}})
    _fake_run(run, cfg)
    (run / 'data' / 'answers' / 'arabic.json').unlink()
    with pytest.raises(pm.PapermillExecutionError, match='run the seeds stage first'):
        pm.execute_notebook(str(REPO / 'nbs' / '03b_alignment.ipynb'), str(tmp_path / 'out.ipynb'), cwd=str(REPO / 'nbs'), progress_bar=False,
                            parameters=dict(culture='arabic', profile='smoke', run_dir=str(run), config_file=str(run / 'config.json')))
