"""The tools that keep measured figures honest: `tools/record.py` summarises a run from its manifest (refusing one
that reused work) and `tools/make_readme.py` fills every `<!--fact:...-->` marker from benchmarks/results."""
import importlib.util, json, sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / 'tools' / f'{name}.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


def manifest(last_run=None):
    tasks = {'seeds/arabic': dict(stage='seeds', status='ok', seconds=5.0, peak_rss_mb=200.0),
             'seeds/english': dict(stage='seeds', status='ok', seconds=6.0, peak_rss_mb=300.0),
             'finetune/arabic': dict(stage='finetune', status='ok', seconds=30.0, peak_rss_mb=2900.0)}
    return dict(stages=tasks, last_run=list(tasks) if last_run is None else last_run, wall_seconds=42.0)


def test_a_run_is_summarised_from_its_manifest():
    rec = tool('record')
    s = rec.summarise_run(manifest())
    assert s['tasks'] == 3 and s['stages']['seeds'] == dict(seconds=11.0, peak_rss_mb=300.0, tasks=2)
    assert s['peak_rss_mb'] == 2900.0 and s['task_seconds'] == 41.0
    with pytest.raises(SystemExit, match='reused 1 task'): rec.summarise_run(manifest(['seeds/arabic', 'seeds/english']))
    m = manifest(); m['stages']['seeds/arabic']['status'] = 'failed'
    with pytest.raises(SystemExit, match='not ok: seeds/arabic'): rec.summarise_run(m)
    assert rec.pytest_counts('...\n350 passed, 2 skipped, 9 warnings in 400.1s\n') == {'passed': 350, 'skipped': 2}


def test_facts_fill_the_markers_and_unknown_ones_fail(tmp_path):
    mr = tool('make_readme')
    (tmp_path / 'main_job.json').write_text(json.dumps(dict(
        wall_seconds=697.5, peak_rss_mb=3883.7, tasks=14, when='2026-11-29', commit='abc1234',
        stages={'seeds': dict(seconds=10.2), 'augment': dict(seconds=128.7)}, study={'finetune.arabic.tuned': '+0.69 [0.31, 0.94]'},
        machine=dict(cores=2, processor='AMD EPYC', cpu_flags=['avx2', 'avx512_bf16']))))
    F = mr.facts(tmp_path)
    assert F['main.wall'] == '11 min 38 s' and F['main.peak'] == '3.8 GiB' and F['main.stages'] == 'seeds 10 s, augment 2 min 9 s'
    assert F['machine'] == '2-core AMD EPYC with AVX-512 BF16' and F['study.finetune.arabic.tuned'] == '+0.69 [0.31, 0.94]'
    text = 'took <!--fact:main.wall-->9 min<!--/fact--> (<!--fact:main.peak-->?<!--/fact-->)'
    assert mr.fill(text, F) == 'took <!--fact:main.wall-->11 min 38 s<!--/fact--> (<!--fact:main.peak-->3.8 GiB<!--/fact-->)'
    with pytest.raises(SystemExit): mr.fill('<!--fact:main.nothing-->1<!--/fact-->', F)


def test_every_marker_in_the_docs_is_a_measured_figure():
    "Every figure the notebooks and the README quote is one the committed results files hold, with that value."
    mr = tool('make_readme')
    F = mr.facts()
    texts = [(p.name, c['source'] if isinstance(c['source'], str) else ''.join(c['source']))
             for p in sorted((REPO / 'nbs').glob('*.ipynb')) for c in json.loads(p.read_text())['cells'] if c['cell_type'] == 'markdown']
    texts.append(('README.md', (REPO / 'README.md').read_text()))
    found = [(n, m.group(1), m.group(2)) for n, t in texts for m in mr.FACT.finditer(t)]
    assert len(found) > 40
    bad = [(n, k, v) for n, k, v in found if F.get(k) != v]
    assert not bad, bad[:5]


def _nb(*cells):
    "A notebook of code cells: (source, tags) pairs."
    return {'cells': [{'cell_type': 'code', 'source': s, 'metadata': {'tags': list(t)} if t else {}, 'outputs': []} for s, t in cells]}


def test_check_tags_follow_what_the_study_reads():
    "A check cell is tagged unless a later study cell reads what it binds or changes; run-folder checks and exported cells stay."
    tc = tool('tag_checks')
    nb = _nb(('x = 1', ()), ('profile = "smoke"', ('parameters',)),
             ('#| export\ndef f(a): return a + 1', ()),
             ('test_eq(f(1), 2)', ()),                                        # 3: a check
             ('Q = load(); test_eq(len(Q), 50)', ()),                         # 4: binds Q, which the study reads
             ('y = f(2)\nassert y == 3\nQ2 = [q for q in Q]', ()),            # 5: binds y, read only by another check
             ('test_eq(y, 3)', ()),                                           # 6
             ('R = [q.id for q in Q]', ()),                                   # 7: the study (a comprehension's own q)
             ('cfg = {}; cfg["k"] = 1; assert cfg', ()),                      # 8: cfg changed, and read below
             ('run = "out"; print(cfg)', ()),
             ('test_eq(open(run).read(), "")', ()),                           # 10: reads the run folder: stays
             ('plot(toy); close()', ('check',)))                              # 11: tagged by hand, read by nobody
    assert tc.plan(nb) == {3, 5, 6, 11}


def test_every_notebook_is_tagged():
    "The test command's check: no notebook's check tags are stale."
    assert tool('tag_checks').main(['--check']) == 0
