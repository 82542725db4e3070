"""The `culturellm` command end to end: papermill parameter injection, the run folder, reuse on rerun,
failure of one culture, stages not built yet, and the `answers`/`cultures`/`config` subcommands."""
import json, os, random, re, shutil, subprocess, sys, time
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm

from culturellm.seeds import CULTURES, culture_answers, load_embedded_counts, load_questions

REPO = Path(__file__).resolve().parents[1]
NBS = REPO / 'nbs'


def cli(*args, cwd=None, env=None):
    "Run the `culturellm` command; returns the CompletedProcess."
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, '-c', 'import sys; from culturellm.run import main; sys.exit(main())', *args],
                          capture_output=True, text=True, cwd=cwd or REPO, env=e, timeout=600)


def test_papermill_injects_culture(tmp_path):
    "A papermill run with culture=korean computes Korean, not the notebook's default culture."
    dst = tmp_path / 'korean' / '00_seeds.ipynb'; dst.parent.mkdir()
    pm.execute_notebook(str(NBS / '00_seeds.ipynb'), str(dst), parameters={'culture': 'korean', 'run_dir': str(tmp_path)},
                        cwd=str(NBS), progress_bar=False)
    nb = nbformat.read(dst, 4)
    tags = [c.metadata.get('tags', []) for c in nb.cells]
    i = next(i for i, t in enumerate(tags) if 'parameters' in t)
    assert 'injected-parameters' in tags[i + 1], "papermill must inject right after the parameters cell"
    got = json.loads((tmp_path / 'data/answers/korean.json').read_text())
    assert got['culture'] == 'korean' and got['countries'] == ['KOR'] and got['respondents'] == {'KOR': 1245}
    want = culture_answers(CULTURES['korean'], load_embedded_counts(), 'majority')
    assert got['answers'] == {str(k): v for k, v in want.items()}
    assert got['answers'] != {str(k): v for k, v in culture_answers(CULTURES['arabic'], load_embedded_counts()).items()}
    rows = [json.loads(l) for l in (tmp_path / 'data/seeds/korean.jsonl').read_text().splitlines()]
    assert len(rows) == 50 and rows[0]['messages'][0]['content'] == CULTURES['korean'].system_prompt


# `smoke_run`: one smoke run shared by the test modules (tests/conftest.py)


def test_smoke_run_folder(smoke_run):
    """The smoke run of every stage of both studies succeeds and leaves executed notebooks, config.json and manifest.json
    with every task's time and peak memory (recorded, never compared with a limit: a test must not depend on the machine)."""
    out, r, secs = smoke_run
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['profile'] == 'smoke' and cfg['cultures'] == ['arabic', 'english']
    m = json.loads((out / 'manifest.json').read_text())
    assert {'packages', 'git', 'seed', 'python', 'stages', 'wall_seconds'} <= set(m)
    assert m['packages']['papermill'] and m['seed'] == 0
    peaks = {k: v.get('peak_rss_mb') for k, v in m['stages'].items()}   # each task's peak memory: its kernel imports torch, > 100 MB
    assert all(isinstance(x, (int, float)) and x > 100 for x in peaks.values()), peaks
    assert m['peak_rss_mb'] == max(peaks.values()) and 'peak memory' in r.stdout
    assert 'peak_rss_mb' in (out / 'report.md').read_text()
    for c in ('arabic', 'english'):
        st = m['stages'][f'seeds/{c}']
        assert st['status'] == 'ok' and st['seconds'] > 0 and len(st['input_hash']) == 64
        assert set(st['inputs']) >= {'notebook', 'code', 'config', 'data', 'culture', 'upstream'}
        nb = nbformat.read(out / c / '00_seeds.ipynb', 4)
        assert nb.metadata.papermill.parameters['culture'] == c and not nb.metadata.papermill.exception
        assert (out / 'data' / 'answers' / f'{c}.json').exists()
    assert (out / 'figures' / 'seeds_country_map_arabic.png').stat().st_size > 10_000
    images = sum('image/png' in o.get('data', {}) for c in nb.cells for o in c.get('outputs', []))
    assert images == 3, f"the executed notebook shows its figures ({images} found)"
    checks = [c for c in nb.cells if 'check' in c.metadata.get('tags', [])]
    assert checks and all(c.execution_count is None and not c.outputs for c in checks)   # a study run skips the chapter's checks
    assert any('run/' in c.source and c.execution_count for c in nb.cells if 'test_eq' in c.source)   # those of the run's own files ran


def test_augment_stage_runs(smoke_run):
    "The augment stage runs once for all cultures and writes the set, every candidate, its quality table and figures."
    out, r, _ = smoke_run
    m = json.loads((out / 'manifest.json').read_text())
    assert m['stages']['augment/all']['status'] == 'ok', m['stages']['augment/all']
    recs = [json.loads(l) for l in (out / 'data' / 'augment_step2.jsonl').read_text().splitlines()]
    final = [json.loads(l) for l in (out / 'data' / 'augmented.jsonl').read_text().splitlines()]
    assert recs and final == [x for x in recs if x['status'] == 'kept']
    assert (out / 'results' / 'augment_quality.csv').exists() and (out / 'figures' / 'augment_similarity.png').exists()
    assert m['stages']['augment/all']['usage']['calls']['misses'] + m['stages']['augment/all']['usage']['calls']['hits'] > 0


def test_finetune_stage_runs(smoke_run):
    "The finetune stage trains each culture and One, writes both set formats and the adapters, and its record reaches the manifest."
    out, _, _ = smoke_run
    m = json.loads((out / 'manifest.json').read_text())
    for c in ('arabic', 'english', 'one'):
        st = m['stages'][f'finetune/{c}']
        assert st['status'] == 'ok', st
        assert (out / 'adapters' / c / 'adapter_config.json').exists() and (out / 'adapters' / c / 'training.json').exists()
        assert (out / 'data' / 'sft' / 'wvs_ab' / f'{c}.jsonl').exists() and (out / 'data' / 'sft' / 'wvs_ab' / f'{c}.trl.jsonl').exists()
        assert st['record']['samples'] > 0 and st['record']['training']['steps'] == 4
    one, ar, en = (m['stages'][f'finetune/{c}']['record']['samples'] for c in ('one', 'arabic', 'english'))
    assert one == ar + en, "One trains on the union of the cultures' sets"
    assert m['stages']['finetune/one']['inputs']['upstream'], "One depends on every culture's seeds"
    assert (out / 'figures' / 'finetune_arabic_agreement.png').exists()


def test_the_figures_the_docs_quote_are_computed_from_a_run(smoke_run):
    "`tools/record.py` reads the figures the README and the chapters quote from a run's results files (here the smoke run's)."
    import importlib.util
    spec = importlib.util.spec_from_file_location('record', Path(__file__).resolve().parents[1] / 'tools' / 'record.py')
    rec = importlib.util.module_from_spec(spec); spec.loader.exec_module(rec)
    out, _, _ = smoke_run
    S = rec.study_figures(out)
    want = {'augment.kept', 'augment.sim', 'finetune.arabic.tuned', 'finetune.arabic.heldout', 'ablation.arabic.base',
            'ablation.arabic.variants', 'scaling.arabic', 'scaling.sizes'}
    if (out / 'results' / 'scores.csv').exists(): want.add('evaluate.tasks')          # the downstream tasks need the data root
    if (out / 'results' / 'gallery_translation.csv').exists(): want.add('gallery.translation')
    assert want <= set(S), sorted(S)
    assert re.fullmatch(r'\d+ questions over \d+ seeds', S['augment.kept'])
    assert re.fullmatch(r'[+−]\d\.\d\d (\[[−]?\d\.\d\d, [−]?\d\.\d\d\]|\(no interval\))', S['finetune.arabic.tuned']), S['finetune.arabic.tuned']
    assert rec._ci(0.5, float('nan'), float('nan'), sign=True) == '+0.50 (no interval)' and rec._ci(-0.2, -0.4, 0.1, sign=True) == '−0.20 [−0.40, 0.10]'
    if 'evaluate.tasks' in want: assert re.fullmatch(r'\d+ of \d+', S['evaluate.tasks'])
    m = rec.summarise_run(json.loads((out / 'manifest.json').read_text()))
    assert m['tasks'] == 16 and set(m['stages']) == {'seeds', 'augment', 'finetune', 'evaluate', 'alignment', 'ablation', 'scaling', 'gallery', 'analysis'}


def test_every_stage_runs_and_the_report_is_named(smoke_run):
    "The smoke run executes every stage of both studies for every culture (and One), ends with the report, and says where it is."
    out, r, _ = smoke_run
    m = json.loads((out / 'manifest.json').read_text())
    keys = {k.split('/')[0] for k in m['last_run']}
    assert keys == {'seeds', 'augment', 'finetune', 'evaluate', 'alignment', 'ablation', 'scaling', 'gallery', 'analysis'}, keys
    bad = {k: (v['status'], v.get('error')) for k, v in m['stages'].items() if v['status'] != 'ok'}
    assert not bad, bad
    assert (out / 'report.md').exists() and f"report: {(out / 'report.md').resolve()}" in r.stdout
    assert (out / 'all' / '01_augment.stderr.log').exists(), "the kernel's stderr (progress bars) is kept beside the notebook"


def test_missing_notebook_is_reported(tmp_path):
    "A stage whose notebook is absent from the notebook folder is listed as missing, never silently skipped, and asking for it is an error."
    nbs = tmp_path / 'nbs'; shutil.copytree(NBS, nbs); (nbs / '04_ablation.ipynb').unlink()
    out = tmp_path / 'run'
    r = cli('run', '--profile', 'smoke', '--out', str(out), '--stages', 'ablation', '--nbs', str(nbs))
    assert r.returncode == 2, r.stdout + r.stderr
    assert 'missing  ablation' in r.stdout and '04_ablation.ipynb does not exist yet' in r.stdout
    m = json.loads((out / 'manifest.json').read_text())
    assert m['stages']['ablation/arabic']['status'] == 'missing'


def test_rerun_reuses_and_config_change_reruns(smoke_run):
    "The same command again executes nothing; a changed configuration executes the stage again."
    out, _, _ = smoke_run
    nb = out / 'arabic' / '00_seeds.ipynb'; before = nb.stat().st_mtime_ns
    r = cli('run', '--profile', 'smoke', '--out', str(out), '--stages', 'seeds')
    assert r.returncode == 0 and r.stdout.count('reused') >= 2, r.stdout
    assert nb.stat().st_mtime_ns == before
    r = cli('run', '--profile', 'smoke', '--out', str(out), '--stages', 'seeds', '--cultures', 'arabic', '--set', 'seeds.answer_rule=mean')
    assert r.returncode == 0, r.stdout + r.stderr
    assert nb.stat().st_mtime_ns != before
    assert json.loads((out / 'data/answers/arabic.json').read_text())['rule'] == 'mean'


def _stand_in_augment(out, questions):
    "The augment stage's two files for a few seed questions (a rewrite and a variant of each), so that finetune runs without augmenting."
    d = out / 'data'; d.mkdir(parents=True, exist_ok=True)
    rec = lambda q, step, text, parent: dict(q_id=q.id, topic=q.topic, option=q.option, step=step, text=text, parent=parent, status='kept')
    (d / 'augment_step1.jsonl').write_text(''.join(json.dumps(rec(q, 1, f'In your view: {q.text}', q.text)) + '\n' for q in questions))
    (d / 'augmented.jsonl').write_text(''.join(json.dumps(rec(q, 2, f'In your own view: {q.text}', f'In your view: {q.text}')) + '\n'
                                               for q in questions))


def test_compat_answers_through_seeds_and_finetune(tmp_path):
    """`seeds.answer_rule=compat` runs through the stages that use the answers: China's Q125 answer (the original's 3 on
    a 0..2 scale) is kept as the text '3', trains as the reply "3", and scores as a disagreement marked `off_scale`."""
    qs = {q.id: q for q in load_questions()}
    out = tmp_path / 'run'
    _stand_in_augment(out, [qs[i] for i in (125, 27, 122)])
    r = cli('run', '--profile', 'smoke', '--out', str(out), '--stages', 'seeds,finetune', '--cultures', 'chinese',
            '--set', 'seeds.answer_rule=compat', '--set', 'finetune.one=false')
    assert r.returncode == 0, r.stdout + r.stderr
    ans = json.loads((out / 'data/answers/chinese.json').read_text())['answers']
    assert ans['125'] == '3' and ans['132'] == 3 and ans['27'] == 2
    for f in ('seeds/chinese.jsonl', 'sft/wvs_ab/chinese.jsonl'):
        recs = [json.loads(l) for l in (out / 'data' / f).read_text().splitlines()]
        q125 = [x['messages'][2]['content'] for x in recs if qs[125].short in x['messages'][1]['content']]
        assert q125 and set(q125) == {'3'}, (f, q125)
    ag = pd.read_csv(out / 'results' / 'finetune_agreement_chinese.csv')
    off = ag[ag.q_id == 125]
    assert len(off) and off.off_scale.all() and (off.agree == 0).all() and (off.p_gold == 0).all(), off
    assert not ag[ag.q_id != 125].off_scale.any()


def _own_culture(d):
    """A user's cultures file adding one culture of one country: Greece (not among the shipped eleven) with its own
    WVS file (40 made-up respondents in Wave 7's format, weighted, some answers missing) and its own test set."""
    qs = load_questions(); rng = random.Random(0)
    rows = ['B_COUNTRY,B_COUNTRY_ALPHA,W_WEIGHT,' + ','.join(q.item for q in qs)]
    rows += [f"300,GRC,{1 + i % 3 / 2}," + ','.join(str(rng.choice(list(q.scale.codes) + [-1])) for q in qs) for i in range(40)]
    (d / 'greece.csv').write_text('\n'.join(rows) + '\n')
    texts = ['You are a wonderful neighbour.', 'Get lost, idiot.', 'The bakery opens at seven.', 'Nobody wants you here, fool.'] * 3
    (d / 'offensive_gr.jsonl').write_text(''.join(json.dumps(dict(text=t, label='OFF' if k % 2 else 'NOT')) + '\n' for k, t in enumerate(texts)))
    f = d / 'cultures.yaml'
    f.write_text("greek:\n  countries: [GRC]\n  language: Greek\n  language_code: el\n  wvs_file: greece.csv\n"
                 "  test_sets:\n    offensive_detect_gr: offensive_gr.jsonl\n")
    return f


def test_own_culture_runs_alone(tmp_path):
    """A culture a user adds — one country, its own WVS file and test set — run alone at smoke through seeds, augment,
    finetune and evaluate: every stage succeeds, its country is on the map, and evaluate scores its test set."""
    f = _own_culture(tmp_path)
    out = tmp_path / 'run'
    r = cli('run', '--profile', 'smoke', '--out', str(out), '--stages', 'seeds,augment,finetune,evaluate', '--cultures', 'greek',
            '--set', f'cultures_file={f}')
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((out / 'manifest.json').read_text())
    assert {k: v['status'] for k, v in m['stages'].items()} == {k: 'ok' for k in ('seeds/greek', 'augment/all', 'finetune/greek', 'finetune/one', 'evaluate/greek')}
    a = json.loads((out / 'data/answers/greek.json').read_text())
    assert a['countries'] == ['GRC'] and a['respondents'] == {'GRC': 40} and a['data'] == [str((tmp_path / 'greece.csv').resolve())]
    assert (out / 'figures' / 'seeds_country_map_greek.png').stat().st_size > 10_000
    s = pd.read_csv(out / 'results' / 'scores_greek.csv')
    f1 = s[(s.task == 'offensive_detect_gr') & (s.metric == 'macro_f1')]
    assert set(f1.model) == {'base', 'greek', 'One'} and (f1.status == 'ok').all() and (f1.n == 6).all(), f1
    t = json.loads((out / 'records/evaluate/greek.json').read_text())['tasks']
    assert [(x['task'], x['status'], x['rows']) for x in t] == [('offensive_detect_gr', 'ok', 12)], t


def test_a_bad_survey_file_is_refused_before_the_run(tmp_path):
    """A culture whose WVS file holds a code off the answer scale is refused before anything runs or is written: one
    line naming the file, row and column (it used to fail inside the seeds task while the other cultures ran)."""
    items = [q.item for q in load_questions()]
    bad = tmp_path / 'atlantis.csv'
    bad.write_text('B_COUNTRY_ALPHA,' + ','.join(items) + '\n' + 'GRC,' + ','.join(['7'] + ['1'] * (len(items) - 1)) + '\n')
    (tmp_path / 'cultures.yaml').write_text(f"- {{name: atlantis, countries: [GRC], language: Greek, wvs_file: {bad.name}}}\n")
    out = tmp_path / 'run'
    r = cli('run', '--profile', 'smoke', '--out', str(out), '--stages', 'seeds', '--cultures', 'atlantis,korean',
            '--set', f"cultures_file={tmp_path / 'cultures.yaml'}", '--jobs', '2')
    assert r.returncode == 2 and not out.exists(), r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1] == (f"culturellm: error: {bad}, row 2, column Q27: code 7 is outside the answer scale 1..4 "
                                                 "(missing values are -1..-5)")


def test_bad_config_is_one_line(tmp_path):
    "Unknown keys and bad values stop the command with one line naming the key."
    for args, msg in [(['--set', 'seeds.answer_rule=median'], "config key 'seeds.answer_rule': expected one of majority"),
                      (['--set', 'sed=1'], "unknown config key 'sed'"),
                      (['--cultures', 'arabic,elvish'], "unknown culture 'elvish'"),
                      (['--stages', 'seed'], "unknown stage 'seed'")]:
        r = cli('run', '--profile', 'smoke', '--out', str(tmp_path / 'x'), *args)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 or r.stderr.strip().splitlines()[-1].startswith('culturellm: error:')


def test_answers_command_anywhere(tmp_path):
    "`culturellm answers chinese --json` works from any folder with no data: the embedded aggregate."
    env = {k: v for k, v in os.environ.items() if k != 'CULTURELLM_DATA'}
    r = subprocess.run([sys.executable, '-c', 'import sys; from culturellm.run import main; sys.exit(main())', 'answers', 'chinese', '--json'],
                       capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    a = json.loads(r.stdout)
    assert len(a) == 50 and a['27'] == 2 and a['132'] is None and a['224'] is None
    d = json.loads(cli('answers', 'arabic', '--rule', 'distribution', '--json').stdout)
    assert abs(sum(d['27'].values()) - 1) < 1e-5 and d['36'] is None
    assert json.loads(cli('answers', 'chinese', '--rule', 'compat', '--json').stdout)['132'] == 3


def test_answers_compat_prints_every_question():
    """`culturellm answers chinese --rule compat` prints all 50 questions: the original's answer that lies off its
    question's scale (Q125: 3 on 0..2) reads as such, and is the text '3' in JSON, never the code 3."""
    r = cli('answers', 'chinese', '--rule', 'compat')
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 50, r.stdout
    q125 = next(l for l in lines if l.startswith('Q125'))
    assert q125.split()[:2] == ['Q125', '3'] and '(off the scale)' in q125, q125
    js = json.loads(cli('answers', 'chinese', '--rule', 'compat', '--json').stdout)
    assert js['125'] == '3' and js['132'] == 3 and js['27'] == 2


def test_answers_from_weighted_file(tmp_path):
    "`--wvs FILE` reads a cross-national-style file and applies its weights."
    qs = load_questions()
    head = 'B_COUNTRY,W_WEIGHT,' + ','.join(q.item for q in qs)
    lo = ','.join(str(q.scale.values[0]) for q in qs); hi = ','.join(str(q.scale.values[-1]) for q in qs)
    f = tmp_path / 'wvs.csv'
    f.write_text(f"{head}\n410,3.0,{lo}\n410,1.0,{hi}\n410,1.0,{hi}\n")
    w = json.loads(cli('answers', 'korean', '--wvs', str(f), '--json').stdout)
    u = json.loads(cli('answers', 'korean', '--wvs', str(f), '--json', '--unweighted').stdout)
    assert w['27'] == 1 and u['27'] == 4      # weight 3 against 1+1, against 1 vs 2 respondents


def test_cultures_and_config_commands():
    "The culture list and the resolved configuration print as JSON."
    cs = json.loads(cli('cultures', '--json').stdout)
    assert [c['name'] for c in cs] == ['arabic', 'bengali', 'chinese', 'english', 'german', 'korean', 'portuguese', 'spanish', 'turkish']
    assert next(c for c in cs if c['name'] == 'spanish')['countries'] == ['ARG', 'MEX']
    cfg = json.loads(cli('config', '--profile', 'paper').stdout)
    assert cfg['cultures'] == ['all'] and cfg['seeds']['source'] == 'microdata'


def _fake_nbs(folder: Path) -> Path:
    """A notebook folder whose stage notebooks only log when they start and end (and the seeds stage fails for
    chinese), each with a cell tagged `check` that leaves a marker: the runner's scheduling, seen from outside."""
    from culturellm.run import STAGES
    folder.mkdir()
    for s in STAGES:
        nb = nbformat.v4.new_notebook()
        p = nbformat.v4.new_code_cell("culture = 'x'\nrun_dir = None\nprofile = 'smoke'\nconfig_file = None"); p.metadata['tags'] = ['parameters']
        body = (f"import time, json\nfrom pathlib import Path\nlog = Path(run_dir) / 'log'; log.mkdir(exist_ok=True)\n"
                f"(log / f'{s.name}-{{culture}}.start').write_text(repr(time.time()))\n"
                + ("if culture == 'chinese': raise ValueError('no data for chinese')\n" if s.name == 'seeds' else '')
                + "import os; time.sleep(float(os.environ.get('FAKE_SLEEP', 0.2)))\n"
                f"import os; (log / f'{s.name}-{{culture}}.gpus').write_text(os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)'))\n"
                f"(log / f'{s.name}-{{culture}}.end').write_text(repr(time.time()))")
        chk = nbformat.v4.new_code_cell(f"(Path(run_dir) / 'log' / f'{s.name}-{{culture}}.check').write_text('ran')"); chk.metadata['tags'] = ['check']
        nb.cells = [p, nbformat.v4.new_code_cell(body), chk]
        nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
        nbformat.write(nb, folder / s.notebook)
    return folder


def test_stage_graph_orders_and_blocks_by_what_a_stage_reads(tmp_path):
    """Tasks start once the tasks they read have ended; a failure blocks only its readers (the gallery, which reads
    nothing, still runs); check cells are skipped unless --checks; the summary lists tasks in study order."""
    nbs, out = _fake_nbs(tmp_path / 'nbs'), tmp_path / 'run'
    r = cli('run', '--profile', 'smoke', '--out', str(out), '--nbs', str(nbs), '--cultures', 'korean,chinese', '--jobs', '2')
    assert r.returncode == 1, r.stdout + r.stderr
    m = json.loads((out / 'manifest.json').read_text())
    st = {k: v['status'] for k, v in m['stages'].items()}
    assert st['seeds/chinese'] == 'failed' and st['seeds/korean'] == 'ok' and st['augment/all'] == 'ok' and st['gallery/all'] == 'ok'
    fail = m['stages']['seeds/chinese']                  # a task that fails at run time: its notebook and error named, on stderr
    assert 'ValueError: no data for chinese' in fail['error'] and str(out / 'chinese' / '00_seeds.ipynb') in r.stderr
    assert nbformat.read(out / 'chinese' / '00_seeds.ipynb', 4).metadata.papermill.exception
    assert st['finetune/korean'] == 'ok' and st['finetune/chinese'] == 'blocked' and st['finetune/one'] == 'blocked'
    assert st['evaluate/korean'] == 'blocked'          # it reads finetune/one, which read the failed culture
    assert st['scaling/all'] == 'blocked' and st['analysis/all'] == 'blocked'
    assert m['jobs'] == 2 and m['checks'] is False
    log = out / 'log'
    t = lambda name: float((log / name).read_text())
    assert t('finetune-korean.start') >= max(t('seeds-korean.end'), t('augment-all.end'))
    assert t('gallery-all.start') > t('augment-all.start')   # the task most others wait for starts first; the gallery's only reader is the report
    assert not list(log.glob('*.check'))                 # the study run skipped every check cell
    from culturellm.run import STAGE_NAMES
    order = [STAGE_NAMES.index(k.split('/')[0]) for k in m['last_run']]
    assert order == sorted(order)
    assert m['stages']['gallery/all']['inputs']['upstream'] == []   # its input hash covers only what it reads
    assert len(m['stages']['finetune/korean']['inputs']['upstream']) == 2   # seeds/korean and augment/all
    r = cli('run', '--profile', 'smoke', '--out', str(out), '--nbs', str(nbs), '--cultures', 'korean', '--stages', 'seeds', '--checks', '--force')
    assert r.returncode == 0, r.stdout + r.stderr
    assert (log / 'seeds-korean.check').read_text() == 'ran'


def test_default_jobs_by_profile():
    from culturellm.run import default_jobs
    assert default_jobs('cpu') == 1 and default_jobs('paper') == 1
    assert default_jobs('smoke') == min(2, os.cpu_count() or 1)


def test_side_by_side_kernels_get_their_own_gpus(tmp_path):
    """With GPUs visible (here named by CUDA_VISIBLE_DEVICES: the kernels never touch them) and --jobs 3, each kernel
    sees only the GPUs it was given: none for a stage without a model, one for a model stage, two for finetune with
    two training processes; tasks that overlap in time never share one. Asking for more than there are is a one-line
    error before the run folder exists."""
    nbs, out = _fake_nbs(tmp_path / 'nbs'), tmp_path / 'run'
    env = {'CUDA_VISIBLE_DEVICES': '0,1,2'}
    r = cli('run', '--profile', 'smoke', '--out', str(out), '--nbs', str(nbs), '--cultures', 'korean,english', '--jobs', '3',
            '--set', 'finetune.processes=2', env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    log = out / 'log'
    got = {f.name[:-5]: f.read_text() for f in log.glob('*.gpus')}
    span = {k: (float((log / f'{k}.start').read_text()), float((log / f'{k}.end').read_text())) for k in got}
    assert got['seeds-korean'] == got['analysis-all'] == ''
    assert got['augment-all'] in ('0', '1', '2') and len(got['finetune-korean'].split(',')) == 2
    for a in got:
        for b in got:
            if a < b and span[a][0] < span[b][1] and span[b][0] < span[a][1] and got[a] and got[b]:
                assert not set(got[a].split(',')) & set(got[b].split(',')), (a, b, got[a], got[b])
    m = json.loads((out / 'manifest.json').read_text())
    assert m['executor'] == {'name': 'local', 'gpus': ['0', '1', '2'], 'cpus': os.cpu_count()}
    r = cli('run', '--profile', 'smoke', '--out', str(tmp_path / 'no'), '--nbs', str(nbs), '--set', 'finetune.processes=4', env=env)
    assert r.returncode == 2 and not (tmp_path / 'no').exists()
    assert r.stderr.strip().splitlines()[-1] == ("culturellm: error: config key 'finetune.processes': 4 training processes, "
                                                 "but this machine has 3 GPUs; expected at most 3")


def test_a_stopped_run_leaves_no_kernel_and_resumes(tmp_path):
    """SIGTERM to `culturellm run`: its notebook processes and their kernels (each in a session of its own) are stopped,
    the running task is recorded `interrupted`, the exit code is 143; while it ran, a second run on the same folder was
    refused with a one-line error naming the holder; a rerun resumes and finishes."""
    import psutil, signal
    nbs, out = _fake_nbs(tmp_path / 'nbs'), tmp_path / 'run'
    args = ('run', '--profile', 'smoke', '--out', str(out), '--nbs', str(nbs), '--cultures', 'korean', '--stages', 'seeds,augment', '--jobs', '1')
    p = subprocess.Popen([sys.executable, '-c', 'import sys; from culturellm.run import main; sys.exit(main())', *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=dict(os.environ, FAKE_SLEEP='120'))
    first = out / 'log'
    for _ in range(600):                                  # until the first task's kernel runs its cell
        if list(first.glob('*.start')): break
        time.sleep(0.2)
    tree = psutil.Process(p.pid).children(recursive=True)
    assert any('ipykernel' in ' '.join(c.cmdline()) for c in tree), [c.cmdline() for c in tree]
    r = cli(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"culturellm: error: run folder {out} is in use by culturellm run (pid {p.pid} on ")
    p.send_signal(signal.SIGTERM)
    so, se = p.communicate(timeout=300)
    assert p.returncode == 143, so + se
    assert not [c.pid for c in tree if psutil.pid_exists(c.pid) and psutil.Process(c.pid).status() != psutil.STATUS_ZOMBIE]
    m = json.loads((out / 'manifest.json').read_text())
    assert m['interrupted'] == 'SIGTERM' and m['stages'][m['last_run'][0]]['status'] == 'interrupted'
    assert 'augment/all' not in m['stages'] or m['stages']['augment/all']['status'] == 'interrupted'
    assert (out / '.lock').read_text() == ''              # released
    r = cli(*args, env={'FAKE_SLEEP': '0'})
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((out / 'manifest.json').read_text())
    assert {k: v['status'] for k, v in m['stages'].items()} == {'seeds/korean': 'ok', 'augment/all': 'ok'} and not m['interrupted']


def _bad_inputs(d: Path, data_root: Path) -> list:
    "(arguments, what the one error line must contain) for each class of bad input a user can give; files written into `d`."
    import csv
    (d / 'adir').mkdir(); (d / 'afile').write_text('x\n')
    culture = lambda extra='', countries='[IRQ]', lang='Greek': f"greek:\n  countries: {countries}\n  language: {lang}\n{extra}"
    ts = lambda f: f"  test_sets:\n    offensive_detect_gr: {f}\n"
    files = {'c_missing_ts.yaml': culture(ts('nofile.jsonl')), 'c_badlabel.yaml': culture(ts('bl.jsonl')), 'bl.jsonl': '{"text": "hi", "label": "banana"}\n',
             'c_notext.yaml': culture(ts('nt.jsonl')), 'nt.jsonl': '{"label": "OFF"}\n', 'c_badjson.yaml': culture(ts('bj.jsonl')), 'bj.jsonl': '{"text": "hi", "label": \n',
             'c_lang.yaml': culture(lang='[1, 2]'), 'c_nocountries.yaml': culture(countries='[]'), 'c_yaml.yaml': 'greek:\n  countries: [GRC\n  language: Greek\n',
             'cfg_yaml.yaml': 'finetune:\n  r: [1\n', 'c_wvs_missing.yaml': culture('  wvs_file: wvs_missing.csv\n'),
             'c_wvs_header.yaml': culture('  wvs_file: wvs_header.csv\n')}
    for k, v in files.items(): (d / k).write_text(v)
    rows = list(csv.reader(open(data_root / 'culturellm' / 'Arabic' / 'Iraq.csv')))
    (d / 'wvs_header.csv').write_text(','.join(rows[0]) + '\n')
    with open(d / 'wvs_missing.csv', 'w', newline='') as f:
        csv.writer(f).writerows([rows[0]] + [[('-1' if h.startswith('Q') else v) for h, v in zip(rows[0], r)] for r in rows[1:20]])
    run = ['run', '--profile', 'smoke', '--stages', 'seeds', '--out', str(d / 'out')]
    return [(['cultures', '--cultures-file', str(d / 'adir')], 'is a folder; expected a file'),
            (run + ['--config', str(d / 'adir')], 'is a folder; expected a file'),
            (['answers', 'arabic', '--wvs', str(d / 'adir')], 'Is a directory'),
            (['run', '--profile', 'smoke', '--out', str(d / 'afile')], 'is a file; expected a run folder'),
            (run + ['--set', f"cultures_file={d / 'c_missing_ts.yaml'}", '--cultures', 'greek'], "test set 'offensive_detect_gr'"),
            (run + ['--set', f"cultures_file={d / 'c_badlabel.yaml'}", '--cultures', 'greek'], "label 'banana' is not in the label set"),
            (run + ['--set', f"cultures_file={d / 'c_notext.yaml'}", '--cultures', 'greek'], 'no text key'),
            (run + ['--set', f"cultures_file={d / 'c_badjson.yaml'}", '--cultures', 'greek'], 'line 1: not valid JSON'),
            (['cultures', '--cultures-file', str(d / 'c_badlabel.yaml')], "label 'banana'"),
            (run + ['--set', 'profile=paper'], "'profile' is chosen with --profile"),
            (run + ['--cultures', ''], "--cultures '': expected"),
            (run + ['--set', 'cultures=[,]'], 'the value is not valid YAML'),
            (run + ['--set', 'cultures=[]'], "config key 'cultures'"),
            (run + ['--set', f"data_root={d / 'nowhere'}"], "config key 'data_root'"),
            (run + ['--timeout', '-5'], '--timeout -5'),
            (run + ['--jobs', '0'], '--jobs 0'),
            (['cultures', '--cultures-file', str(d / 'c_lang.yaml')], "key 'language' is [1, 2]; expected a non-empty string"),
            (['cultures', '--cultures-file', str(d / 'c_nocountries.yaml')], "key 'countries' is empty"),
            (['cultures', '--cultures-file', str(d / 'c_yaml.yaml')], 'at line 3, column'),
            (run + ['--config', str(d / 'cfg_yaml.yaml')], 'at line 3, column 1'),
            (run + ['--set', f"cultures_file={d / 'c_wvs_missing.yaml'}", '--cultures', 'greek'], 'is a missing-value code (negative) on all 50 questions'),
            (run + ['--set', f"cultures_file={d / 'c_wvs_header.yaml'}", '--cultures', 'greek'], 'the file has no rows'),
            (['rescore', 'geomlama', str(d / 'afile'), '--language', 'xx'], "--language 'xx': unknown"),
            (['rescore', 'geomlama', str(d / 'afile'), '--out', str(d / 'adir')], '--out'),
            (run + ['--set', 'finetune.processes=512'], "'finetune.processes'")]


def test_every_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, data_root):
    """Each class of bad input (a folder for a file, a file for the run folder, a culture's broken test set or survey file,
    values the configuration must refuse, YAML errors with their line and column) gets one `culturellm: error:` line on
    stderr, exit 2, and leaves no run folder behind."""
    from culturellm.run import main
    for argv, want in _bad_inputs(tmp_path, data_root):
        rc = main(argv)
        out, err = capsys.readouterr()
        lines = [l for l in err.splitlines() if l.strip()]
        assert rc == 2 and len(lines) == 1 and lines[0].startswith('culturellm: error: ') and want in lines[0], (argv, rc, err)
        assert 'Traceback' not in err and not (tmp_path / 'out').exists(), argv
