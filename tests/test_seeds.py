"""Tests of `culturellm.seeds` against the CultureLLM release's own data.

Every expected value is computed here, independently of the library, from the WVS per-country
CSV extracts (read with the plain `csv` module) or read from the original fine-tuning files.
Tests that need the data take the `data_root` fixture (tests/conftest.py) and skip without it."""
import csv, dataclasses, json, math
from collections import Counter
from functools import lru_cache
from pathlib import Path

import pytest

import culturellm
from culturellm.config import ConfigError
from culturellm.seeds import (CULTURES, Culture, WVSDataError, answer_label, build_embedded, culture_answers, get_culture,
                              is_off_scale, load_cultures, load_questions, question_prompt, read_wvs, sft_record, wvs_counts)

PKG_DATA = Path(culturellm.__file__).resolve().parent / 'data'

# ------------------------------------------------------------------ independent facts about the data
# The WVS extracts of the release, by country, with their respondent counts.
EXTRACTS = {'IRQ': 'Arabic/Iraq.csv', 'JOR': 'Arabic/Jordan.csv', 'BGD': 'Bengali/Bangladesh.csv',
            'CHN': 'China/China.csv', 'USA': 'English/United States.csv', 'DEU': 'Germany/Germany.csv',
            'KOR': 'Korean/South Korea.csv', 'BRA': 'Portuguese/Brazil.csv', 'ARG': 'Spanish/Argentina.csv',
            'MEX': 'Spanish/Mexico.csv', 'TUR': 'Turkey/Turkey.csv'}
RESPONDENTS = {'IRQ': 1200, 'JOR': 1203, 'BGD': 1200, 'CHN': 3036, 'USA': 2596, 'DEU': 1528,
               'KOR': 1245, 'BRA': 1762, 'ARG': 1003, 'MEX': 1741, 'TUR': 2415}
# The 50 item columns and the answer codes of the items the tests use.
ITEMS = ([f'Q{i}' for i in range(27, 42)] + [f'Q{i}' for i in range(122, 130)] + [f'Q{i}' for i in range(132, 139)]
         + [f'Q{i}' for i in range(158, 163)] + ['Q169', 'Q170', 'Q196', 'Q197', 'Q198'] + [f'Q{i}' for i in range(224, 234)])
SCALES = {27: [1, 2, 3, 4], 36: [1, 2, 3, 4, 5], 122: [0, 1, 2], 158: list(range(1, 11)), 196: [1, 2, 3, 4],
          226: [1, 2, 3, 4]}
CHINA_NOT_ASKED = [125, *range(132, 139), *range(224, 234)]
# The main fine-tuning file of each culture.
FINETUNE = {'arabic': 'Arabic/Finetune/WVQ_arabic_Iraq_Jordan.jsonl', 'bengali': 'Bengali/Finetune/WVQ_Bengali.jsonl',
            'chinese': 'China/Finetune/WVQ_China.jsonl', 'english': 'English/Finetune/WVQ_English.jsonl',
            'german': 'Germany/Finetune/WVQ_Germany.jsonl', 'korean': 'Korean/Finetune/WVQ_Korean.jsonl',
            'portuguese': 'Portuguese/Finetune/WVQ_Portuguese.jsonl', 'spanish': 'Spanish/Finetune/WVQ_Spanish.jsonl',
            'turkish': 'Turkey/Finetune/WVQ_Turkey.jsonl'}


# ------------------------------------------------------------------ helpers: the csv module only
def is_summary(row:dict) -> bool:
    "The original scripts' `Avg*` rows: B_COUNTRY starts with 'Avg' and B_COUNTRY_ALPHA is empty."
    return row['B_COUNTRY'].startswith('Avg') and not row['B_COUNTRY_ALPHA'].strip()

@lru_cache(maxsize=None)
def csv_table(path:Path) -> tuple:
    "(respondent rows, summary rows) of a WVS extract, as lists of dicts of strings."
    with open(path, newline='', encoding='utf-8-sig') as f: rows = list(csv.DictReader(f))
    return [r for r in rows if not is_summary(r)], [r for r in rows if is_summary(r)]

def all_codes(root:Path, country:str, item:str) -> list:
    "Every respondent's raw integer code of `item` (negative codes included)."
    return [int(r[item]) for r in csv_table(root / 'culturellm' / EXTRACTS[country])[0]]

def valid_codes(root:Path, country:str, item:str) -> list:
    "The respondents' valid (>= 0) codes of `item`."
    return [c for c in all_codes(root, country, item) if c >= 0]

def hand_rules(codes:list, scale:list) -> dict:
    "Majority (ties: nearest the mean, then the lower code), rounded-half-up mean and distribution of valid codes."
    n, k = len(codes), Counter(codes)
    mean = sum(codes) / n
    top = max(k.values())
    majority = min((c for c in k if k[c] == top), key=lambda c: (abs(c - mean), c))
    return dict(majority=majority, mean=math.floor(mean + 0.5), distribution={c: k.get(c, 0) / n for c in scale})

def hand_rules_from_dist(dist:dict) -> dict:
    "The same rules from a distribution {code: share} (for cultures of several countries)."
    mean = sum(c * p for c, p in dist.items())
    top = max(dist.values())
    majority = min((c for c, p in dist.items() if abs(p - top) < 1e-12), key=lambda c: (abs(c - mean), c))
    return dict(majority=majority, mean=math.floor(mean + 0.5), distribution=dist)

@lru_cache(maxsize=None)
def finetune_rows(path:Path) -> list:
    "The records of an original fine-tuning file (JSON per line, split on '\\n' only: some contain U+2028)."
    return [json.loads(l) for l in path.read_text(encoding='utf-8').split('\n') if l.strip()]

def write_wvs_csv(path:Path, rows:list, items:list=ITEMS, header:list|None=None, summary:bool=False) -> Path:
    "A small WVS-like CSV: one Korean respondent per dict in `rows` (item -> value, default '1')."
    header = header or ['B_COUNTRY', 'B_COUNTRY_ALPHA', *items]
    with open(path, 'w', newline='', encoding='utf-8') as f:
        w = csv.writer(f); w.writerow(header)
        for r in rows: w.writerow([{'B_COUNTRY': '410', 'B_COUNTRY_ALPHA': 'KOR'}.get(h, r.get(h, '1')) for h in header])
        if summary: w.writerow(['Avg', ''] + ['9.75'] * (len(header) - 2))   # like the original's summary rows
    return path

def one_line_error(excinfo) -> str:
    "The exception's message, checked to be a single line."
    msg = str(excinfo.value)
    assert msg and '\n' not in msg, f"expected a one-line message, got {msg!r}"
    return msg

@pytest.fixture(scope='module')
def questions():
    "The 50 seed questions, by id."
    return {q.id: q for q in load_questions()}


# ================================================================== 1. answer rules against the microdata
SINGLE = [('korean', 'KOR', 27), ('chinese', 'CHN', 158), ('english', 'USA', 36), ('german', 'DEU', 122), ('turkish', 'TUR', 196)]

@pytest.mark.parametrize('source', ['embedded', 'microdata'])
@pytest.mark.parametrize('culture,country,qid', SINGLE)
def test_rules_single_country(data_root, culture, country, qid, source):
    "Majority, mean and distribution of one country's valid codes equal the hand-computed values."
    c = CULTURES[culture]
    assert c.countries == (country,)
    counts = wvs_counts(c, source, root=data_root)
    want = hand_rules(valid_codes(data_root, country, f'Q{qid}'), SCALES[qid])
    for rule in ('majority', 'mean'):
        got = culture_answers(c, counts, rule)[qid]
        assert type(got) is int and got == want[rule], (rule, got, want[rule])
    got = culture_answers(c, counts, 'distribution')[qid]
    assert list(got) == SCALES[qid]
    assert got == pytest.approx(want['distribution'], abs=1e-6)
    assert sum(got.values()) == pytest.approx(1, abs=1e-5)

@pytest.mark.parametrize('source', ['embedded', 'microdata'])
@pytest.mark.parametrize('qid', [27, 122, 158])
def test_rules_two_countries(data_root, qid, source):
    "Arabic's distribution is the equal-weight average of Iraq's and Jordan's; majority and mean follow from it."
    c = CULTURES['arabic']
    assert c.countries == ('IRQ', 'JOR')
    irq = hand_rules(valid_codes(data_root, 'IRQ', f'Q{qid}'), SCALES[qid])['distribution']
    jor = hand_rules(valid_codes(data_root, 'JOR', f'Q{qid}'), SCALES[qid])['distribution']
    want = hand_rules_from_dist({k: (irq[k] + jor[k]) / 2 for k in SCALES[qid]})
    counts = wvs_counts(c, source, root=data_root)
    assert culture_answers(c, counts, 'distribution')[qid] == pytest.approx(want['distribution'], abs=1e-6)
    assert culture_answers(c, counts, 'majority')[qid] == want['majority']
    assert culture_answers(c, counts, 'mean')[qid] == want['mean']

@pytest.mark.parametrize('source', ['embedded', 'microdata'])
def test_arabic_not_asked(data_root, source):
    "Q36 and Q226 were asked in neither Iraq nor Jordan: no answer, except compat's fake 4."
    for country in ('IRQ', 'JOR'):
        for qid in (36, 226): assert valid_codes(data_root, country, f'Q{qid}') == []
    c = CULTURES['arabic']; counts = wvs_counts(c, source, root=data_root)
    for rule in ('majority', 'mean', 'distribution'):
        a = culture_answers(c, counts, rule)
        assert a[36] is None and a[226] is None, rule
    a = culture_answers(c, counts, 'compat')
    assert a[36] == 4 and a[226] == 4

def test_tie_breaks_and_rounding(tmp_path):
    "Ties go to the code nearest the mean, then the lower code; the mean rounds half up; missing codes are ignored."
    cols = {'Q27': [1, 1, 4, 4, 2],      # tie 1/4, mean 2.4 -> 1
            'Q28': [1, 1, 4, 4, 3],      # tie 1/4, mean 2.6 -> 4
            'Q29': [1, 1, 4, 4, -1],     # tie 1/4, mean 2.5 -> lower code 1; mean rule 3
            'Q30': [2, 3, -1, -2, -5],   # mean 2.5 -> 3 (half up, not to even)
            'Q31': [2, 2, 2, -4, -1]}    # only valid codes count
    rows = [{k: str(v[i]) for k, v in cols.items()} for i in range(5)]
    f = write_wvs_csv(tmp_path / 'kor.csv', rows, summary=True)
    c = Culture('synthetic', ('KOR',), 'Korean', wvs_file=str(f))
    counts = wvs_counts(c)
    assert counts['KOR'].n == 5   # the Avg row is not a respondent
    maj, mean = culture_answers(c, counts, 'majority'), culture_answers(c, counts, 'mean')
    assert [maj[q] for q in (27, 28, 29, 30, 31)] == [1, 4, 1, 2, 2]
    assert [mean[q] for q in (27, 28, 29, 30, 31)] == [2, 3, 3, 3, 2]
    assert culture_answers(c, counts, 'distribution')[31] == {1: 0.0, 2: 1.0, 3: 0.0, 4: 0.0}


# ================================================================== 2. China's never-asked items
@pytest.mark.parametrize('source', ['embedded', 'microdata'])
def test_china_not_asked(data_root, source, questions):
    """China's 18 never-asked items have no answer under majority, mean and distribution; compat gives 3, as an int
    code where 3 is on the scale and as the original's text '3' where it is not (Q125, coded 0..2)."""
    assert [q for q in questions if not valid_codes(data_root, 'CHN', f'Q{q}')] == CHINA_NOT_ASKED
    c = CULTURES['chinese']; counts = wvs_counts(c, source, root=data_root)
    for rule in ('majority', 'mean', 'distribution'):
        a = culture_answers(c, counts, rule)
        assert [q for q, v in a.items() if v is None] == CHINA_NOT_ASKED, rule
    a = culture_answers(c, counts, 'compat')
    assert {q: a[q] for q in CHINA_NOT_ASKED} == {q: '3' if q == 125 else 3 for q in CHINA_NOT_ASKED}


# ================================================================== 3. compat against the original release
@pytest.mark.parametrize('source', ['embedded', 'microdata'])
@pytest.mark.parametrize('culture', list(FINETUNE))
def test_compat_answers_match_finetune_files(data_root, culture, source, questions):
    "compat answers are the assistant targets of the first 50 rows (first country) and, for two-country cultures, of rows n/2.. (second)."
    c = CULTURES[culture]
    rows = finetune_rows(data_root / 'culturellm' / FINETUNE[culture])
    assert len(rows) == 1100
    counts = wvs_counts(c, source, root=data_root)
    got = culture_answers(c, counts, 'compat')
    assert [str(got[q]) for q in questions] == [r['messages'][2]['content'] for r in rows[:50]]
    if len(c.countries) == 2:
        second = dataclasses.replace(c, countries=c.countries[::-1])
        got2 = culture_answers(second, counts, 'compat')
        h = len(rows) // 2
        assert [str(got2[q]) for q in questions] == [r['messages'][2]['content'] for r in rows[h:h + 50]]
        assert got2 != got

def test_compat_second_countries():
    "The two-country cultures are ordered as the original's halves: Iraq then Jordan, Argentina then Mexico."
    assert CULTURES['arabic'].countries == ('IRQ', 'JOR') and CULTURES['spanish'].countries == ('ARG', 'MEX')

@pytest.mark.parametrize('country', list(EXTRACTS))
def test_compat_matches_csv_avg_row(data_root, country, questions):
    "compat is int(|Avg|) of the CSV's own `Avg` summary row, for every item of every country."
    culture = Culture('x', (country,), 'X')
    got = culture_answers(culture, wvs_counts(culture), 'compat')
    avg = next(r for r in csv_table(data_root / 'culturellm' / EXTRACTS[country])[1] if r['B_COUNTRY'] == 'Avg')
    want = {q: abs(int(float(avg[f'Q{q}']))) for q in questions}
    assert {q: got[q] for q in questions} == {q: v if v in questions[q].scale else str(v) for q, v in want.items()}

@pytest.mark.parametrize('culture', list(FINETUNE))
def test_compat_records_reproduce_original(data_root, culture, questions):
    """sft_record(..., 'compat') reproduces the first 50 records of the main file exactly (system prompt, prompt,
    answer), including the original's off-scale invented answers (China Q125: 3 on a 0..2 scale)."""
    c = CULTURES[culture]
    rows = finetune_rows(data_root / 'culturellm' / FINETUNE[culture])
    ans = culture_answers(c, wvs_counts(c), 'compat')
    assert rows[0]['messages'][0]['content'] == f"You are an {c.original_name} chatbot that know {c.original_name} very well."
    assert [sft_record(q, c, ans[q.id], 'compat') for q in questions.values()] == rows[:50]


def test_compat_off_scale_is_text(questions):
    """The compat rule's off-scale answer is the original's text (China Q125: '3' on a 0..2 scale): it trains as that
    text in either prompt style and reads 'off the scale'; an int off the scale, or a text that is a code, is refused."""
    c = CULTURES['chinese']
    a = culture_answers(c, wvs_counts(c), 'compat')
    assert a[125] == '3' and is_off_scale(a[125]) and answer_label(questions[125], a[125]) == 'off the scale'
    assert [q for q, v in a.items() if is_off_scale(v)] == [125]
    for style in ('compat', 'default'):
        assert sft_record(questions[125], c, a[125], style)['messages'][2]['content'] == '3'
    with pytest.raises(ValueError, match='Q125: answer 3 is not a code of its scale'):
        sft_record(questions[125], c, 3, 'compat')
    with pytest.raises(ValueError, match="'1' is a code of its scale; pass it as the int 1"):
        sft_record(questions[125], c, '1')
    for rule in ('majority', 'mean'):
        assert not any(is_off_scale(v) for v in culture_answers(c, wvs_counts(c), rule).values())


# ================================================================== 4. the shipped aggregate
@pytest.fixture(scope='module')
def rebuilt(data_root, tmp_path_factory):
    "build_embedded(data_root) written into a fresh folder."
    dest = tmp_path_factory.mktemp('embedded')
    build_embedded(data_root, dest)
    return dest

@pytest.mark.parametrize('name', ['wvs_counts.json', 'wvs_questions.json'])
def test_embedded_is_rebuilt_exactly(rebuilt, name):
    "The package's shipped aggregate is byte-equal to one rebuilt from the microdata."
    assert (rebuilt / name).read_bytes() == (PKG_DATA / name).read_bytes()

def test_embedded_questions_are_wvq(rebuilt, data_root):
    "The shipped questions are the 50 records of WVQ.jsonl, verbatim and in order."
    recs = [json.loads(l) for l in (data_root / 'culturellm' / 'WVQ.jsonl').read_text(encoding='utf-8').split('\n') if l.strip()]
    assert json.loads((rebuilt / 'wvs_questions.json').read_text())['questions'] == recs
    assert [f"Q{r['q_id']}" for r in recs] == ITEMS

def test_embedded_respondents(rebuilt, data_root):
    "Respondents per country equal the csv module's count of country rows."
    got = json.loads((rebuilt / 'wvs_counts.json').read_text())['countries']
    assert sorted(got) == sorted(EXTRACTS)
    for c, rel in EXTRACTS.items():
        rows, summary = csv_table(data_root / 'culturellm' / rel)
        assert all(r['B_COUNTRY_ALPHA'] == c for r in rows) and 1 <= len(summary) <= 3
        assert got[c]['n'] == len(rows) == RESPONDENTS[c], c

@pytest.mark.parametrize('country,qid', [('CHN', 125), ('USA', 36), ('IRQ', 122), ('TUR', 196), ('BRA', 158), ('JOR', 226)])
def test_embedded_code_counts(rebuilt, data_root, country, qid):
    "Per-code counts (negative codes included) of an item equal the csv module's."
    got = json.loads((rebuilt / 'wvs_counts.json').read_text())['countries'][country]['counts'][str(qid)]
    want = Counter(all_codes(data_root, country, f'Q{qid}'))
    assert {int(k): v for k, v in got.items()} == dict(want)
    assert sum(got.values()) == RESPONDENTS[country]


# ================================================================== 5. bad input: one-line errors
BAD_CSV = [  # (id, rows as item -> value, kept items, expected substrings)
    ('out-of-scale', [{}, {'Q27': '7'}], ITEMS, ['row 3', 'column Q27', '7']),
    ('non-integer', [{'Q158': '2.5'}], ITEMS, ['row 2', 'column Q158', '2.5']),
    ('text', [{}, {}, {'Q36': 'abc'}], ITEMS, ['row 4', 'column Q36', 'abc']),
    ('minus-9', [{}, {}, {'Q122': '-9'}], ITEMS, ['row 4', 'column Q122', '-9']),
    ('missing-column', [{}], [i for i in ITEMS if i != 'Q160'], ['Q160']),
]

@pytest.mark.parametrize('rows,items,parts', [c[1:] for c in BAD_CSV], ids=[c[0] for c in BAD_CSV])
def test_bad_csv(tmp_path, rows, items, parts):
    "A bad WVS file raises WVSDataError with a one-line message naming the file, row and column."
    f = write_wvs_csv(tmp_path / 'bad extract.csv', rows, items)
    with pytest.raises(WVSDataError) as e: read_wvs(f)
    msg = one_line_error(e)
    for p in [str(f), *parts]: assert p in msg, (p, msg)

def test_bad_csv_through_wvs_counts(tmp_path):
    "The same error reaches the caller of wvs_counts for a culture with its own WVS file."
    f = write_wvs_csv(tmp_path / 'bad.csv', [{}, {}, {}, {'Q197': '5'}])
    with pytest.raises(WVSDataError) as e: wvs_counts(Culture('k', ('KOR',), 'Korean', wvs_file=str(f)))
    msg = one_line_error(e)
    assert 'bad.csv' in msg and 'row 5' in msg and 'column Q197' in msg

@pytest.mark.parametrize('content', ['', 'Q27,Q28\n1,2\n'], ids=['empty', 'no-country-column'])
def test_unreadable_csv(tmp_path, content):
    "An empty file, or one without a country column, is a one-line error naming the file."
    f = tmp_path / 'empty.csv'; f.write_text(content)
    with pytest.raises(WVSDataError) as e: read_wvs(f)
    assert str(f) in one_line_error(e)

def test_missing_csv(tmp_path):
    "A file that does not exist is a one-line error naming it."
    with pytest.raises(WVSDataError) as e: read_wvs(tmp_path / 'nowhere.csv')
    assert 'nowhere.csv' in one_line_error(e)

BAD_YAML = [
    ('unknown-key', "- {name: greek, countries: [GRC], language: Greek, colour: blue}\n", ['entry 1', "'colour'"]),
    ('unknown-country', "- {name: greek, countries: [GRC], language: Greek}\n- {name: elvish, countries: [XXX], language: Sindarin}\n",
     ['entry 2', "'XXX'"]),
    ('missing-language', "- {name: greek, countries: [GRC]}\n", ['entry 1', "'language'"]),
]

@pytest.mark.parametrize('text,parts', [c[1:] for c in BAD_YAML], ids=[c[0] for c in BAD_YAML])
def test_bad_cultures_file(tmp_path, text, parts):
    "A bad cultures file raises ConfigError with a one-line message naming the file, entry and key."
    f = tmp_path / 'cultures.yaml'; f.write_text(text)
    with pytest.raises(ConfigError) as e: load_cultures(f)
    msg = one_line_error(e)
    for p in [str(f), *parts]: assert p in msg, (p, msg)

def test_good_cultures_file(tmp_path):
    "A valid cultures file adds its culture to the built-in ones (control for the cases above)."
    f = tmp_path / 'cultures.yaml'; f.write_text("- {name: greek, countries: [GRC], language: Greek}\n")
    cs = load_cultures(f)
    assert cs['greek'].countries == ('GRC',) and set(CULTURES) < set(cs)

def test_unknown_culture():
    "get_culture of an unknown name is a one-line ConfigError listing the known cultures."
    with pytest.raises(ConfigError) as e: get_culture('klingon')
    msg = one_line_error(e)
    assert "'klingon'" in msg and 'arabic' in msg and 'turkish' in msg

def test_unknown_answer_rule():
    "An unknown answer rule is a one-line ConfigError naming it."
    c = CULTURES['korean']
    with pytest.raises(ConfigError) as e: culture_answers(c, wvs_counts(c), 'median')
    msg = one_line_error(e)
    assert "'median'" in msg and 'majority' in msg

def test_country_without_data(tmp_path):
    "A culture whose country has no data is a one-line WVSDataError, from either source."
    c = Culture('greek', ('GRC',), 'Greek')
    with pytest.raises(WVSDataError) as e: wvs_counts(c)
    assert 'GRC' in one_line_error(e)
    with pytest.raises(WVSDataError) as e: wvs_counts(c, 'microdata', root=tmp_path)
    assert 'GRC' in one_line_error(e)


# ================================================================== 6. question prompts and scales
def test_q31_prompt_fix(questions, data_root):
    "Q31's scale typo ('4. Disagree 4.') is fixed in the default prompt and kept in the compat prompt."
    q = questions[31]
    assert q.scale.codes == (1, 2, 3, 4) and q.scale.label(3) == 'Disagree'
    default = question_prompt(q)
    assert '3. Disagree' in default and '4. Disagree 4.' not in default and '4. Strongly disagree' in default
    compat = question_prompt(q, 'compat')
    assert '2. agree 4. Disagree 4. Strongly disagree' in compat
    rows = finetune_rows(data_root / 'culturellm' / FINETUNE['english'])
    assert rows[list(questions).index(31)]['messages'][1]['content'] == compat

def test_scale_q158(questions):
    "Q158 labels only its ends: codes 1..10, the middle unlabelled."
    s = questions[158].scale
    assert s.codes == tuple(range(1, 11)) and s.values == list(range(1, 11))
    assert s.label(1) == 'Completely disagree' and s.label(10) == 'Completely agree' and s.label(5) == '5'
    p = question_prompt(questions[158])
    assert '1 to 10' in p and '1 = Completely disagree' in p and '10 = Completely agree' in p
    assert question_prompt(questions[158], 'compat').startswith('Give me the answer from 1 to 10: ')

def test_scale_migration(questions):
    "Migration items are presented 2, 1, 0 (Agree, Hard to say, Disagree); values ascend."
    for qid in range(122, 130):
        s = questions[qid].scale
        assert s.codes == (2, 1, 0) and s.values == [0, 1, 2]
        assert [s.label(c) for c in s.codes] == ['Agree', 'Hard to say', 'Disagree']
    p = question_prompt(questions[122])
    assert p.index('2. Agree') < p.index('1. Hard to say') < p.index('0. Disagree')
    assert question_prompt(questions[122], 'compat').startswith('Give me the answer from 0 to 2: ')

def test_prompt_style_unknown(questions):
    "An unknown prompt style is an error naming it."
    with pytest.raises(ValueError, match="'fancy'"): question_prompt(questions[27], 'fancy')
