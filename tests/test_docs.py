"""The docs site (tools/build_docs.py): built from the notebooks, with the results and figures of a real run folder,
every internal link resolving, the API reference complete; and, where Chromium is installed, every page loaded in
headless Chromium with every image actually decoded. Without Chromium the HTML checks still run."""
import importlib.util, inspect, json, os, re, shutil, subprocess, sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('build_docs', REPO / 'tools' / 'build_docs.py')
bd = importlib.util.module_from_spec(spec); spec.loader.exec_module(bd)

CHROMIUM = next((p for p in (shutil.which('chromium'), shutil.which('chromium-browser'), shutil.which('google-chrome')) if p), None)
CHROMEDRIVER = shutil.which('chromedriver')


class _Refs(HTMLParser):
    "Every href/src of a page, and every id it defines."
    def __init__(self):
        super().__init__(); self.refs, self.ids, self.imgs = [], set(), []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if tag == 'a' and a.get('name'): self.ids.add(a['name'])
        for k in ('href', 'src'):
            if a.get(k) is not None: self.refs.append((tag, a[k]))
        if tag == 'img': self.imgs.append(a.get('src'))


def text_of(page:Path) -> str:
    "A page's text, tags dropped (syntax highlighting splits code into spans)."
    import html
    return html.unescape(re.sub(r'<[^>]+>', '', page.read_text(encoding='utf-8')))


def parse(page:Path) -> _Refs:
    p = _Refs(); p.feed(page.read_text(encoding='utf-8')); return p


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    "A real run folder: the `seeds` stage for one culture at the smoke profile (executed notebook with figures)."
    out = tmp_path_factory.mktemp('docs') / 'run'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, '-c', 'import sys; from culturellm.run import main; sys.exit(main())', 'run', '--profile', 'smoke', '--stages', 'seeds',
                        '--cultures', 'arabic', '--out', str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (out / 'arabic' / '00_seeds.ipynb').is_file()
    return out


@pytest.fixture(scope='module')
def site(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('docs') / '_docs'
    res = bd.build(out, runs=[run_dir])
    return out, res


def test_pages(site):
    "Home page, one page per notebook in nbs/ (whatever exist), the API reference; run pages say where they come from."
    out, res = site
    stems = [p.stem for p in bd.notebooks(REPO / 'nbs')]
    assert len(stems) >= 10
    for s in ['index', 'api'] + stems: assert (out / f'{s}.html').is_file(), s
    assert res['pages'] == ['index'] + stems + ['api']
    seeds = (out / '00_seeds.html').read_text()
    assert 'come from the run folder' in seeds and 'culture <code' in seeds and '<code class="docutils literal notranslate"><span class="pre">smoke</span></code>' in seeds
    assert 'shows the notebook unexecuted' in (out / '00c_stats.html').read_text()
    home = (out / 'index.html').read_text()
    for s in stems: assert f'href="{s}.html"' in home, f"{s} is not in the site's navigation"


def test_figures_from_run(site, run_dir):
    "The executed notebook's figures are on its page, as image files of the site; the home page shows its map."
    out, _ = site
    nb = json.loads((run_dir / 'arabic' / '00_seeds.ipynb').read_text())
    n_png = sum('image/png' in o.get('data', {}) for c in nb['cells'] for o in c.get('outputs', []))
    imgs = [s for s in parse(out / '00_seeds.html').imgs if s.startswith('_images/')]
    assert n_png >= 1 and len(imgs) == n_png, (n_png, imgs)
    for s in imgs: assert (out / s).stat().st_size > 1000
    assert '_images/country_map.png' in parse(out / 'index.html').imgs


def test_internal_links(site):
    "Every internal href/src of every page resolves to a built file, and every #fragment to an id on its page."
    out, _ = site
    pages = sorted(out.rglob('*.html'))
    ids = {p: parse(p).ids for p in pages}
    bad, n = [], 0
    for page in pages:
        for tag, ref in parse(page).refs:
            u = urlsplit(ref)
            if u.scheme or ref.startswith('//'): continue          # external (http:, mailto:, data:)
            n += 1
            target = (page.parent / unquote(u.path)).resolve() if u.path else page
            if target.is_dir(): target = target / 'index.html'
            if not target.is_file(): bad.append(f'{page.name}: {tag} {ref}'); continue
            if u.fragment and target.suffix == '.html' and target in ids and unquote(u.fragment) not in ids[target]:
                bad.append(f'{page.name}: {tag} {ref} (no such anchor)')
    assert n > 100, n
    assert not bad, bad[:20]


def test_show_doc(site):
    "Exported cells appear as nbdev's show_doc (signature with docments), hidden and export cells' code does not."
    out, _ = site
    assert 'id="bootstrap-ci"' in (out / '00c_stats.html').read_text()
    stats = text_of(out / '00c_stats.html')
    assert 'seed:int=0, # resampling seed' in stats                              # the signature with its docments
    assert 'default_exp' not in stats and 'from fastcore.test import' not in stats
    assert 'np.random.default_rng(seed).integers' not in stats                  # the exported body is not shown
    assert 'test_eq(bootstrap_ci(np.ones(20))' in stats                          # the tests are


def test_api_reference(site):
    "Every exported function and class of every module is on the API page, with each of its documented parameters."
    from fastcore.docments import docments
    out, res = site
    api, text = (out / 'api.html').read_text(), text_of(out / 'api.html')
    from culturellm._modidx import d
    missing, n = [], 0
    for modname in d['syms']:
        m = importlib.import_module(modname)
        for nm in getattr(m, '__all__', []):
            obj = getattr(m, nm)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or obj.__module__ != modname: continue
            n += 1
            if f'id="{nm.lower().replace("_", "-")}' not in api: missing.append(nm); continue
            for arg, doc in docments(obj, full=True).items():
                c = doc.get('docment') if isinstance(doc, dict) else None
                if c and arg != 'return' and c.strip() not in text: missing.append(f'{nm}({arg}): {c}')
    assert n >= 100, n
    assert not missing, missing[:20]


def test_bad_input(tmp_path):
    "A missing run folder, and an output folder that is not a docs build, are one-line errors naming the path."
    with pytest.raises(SystemExit, match='not a folder'): bd.build(tmp_path / 'out', runs=[tmp_path / 'nope'])
    (tmp_path / 'mine').mkdir(); (tmp_path / 'mine' / 'keep.txt').write_text('x')
    with pytest.raises(SystemExit, match='refusing to replace'): bd.build(tmp_path / 'mine')
    assert (tmp_path / 'mine' / 'keep.txt').exists()


def test_executed_nb_choice(tmp_path):
    "A run's `all` unit first, then the manifest's cultures in order, then other units."
    run = tmp_path / 'run'
    for u in ('zulu', 'english', 'arabic'): (run / u).mkdir(parents=True); (run / u / 'x.ipynb').write_text('{}')
    (run / 'manifest.json').write_text(json.dumps({'profile': 'cpu', 'cultures': ['english', 'arabic']}))
    assert bd.executed_nb(run, 'x.ipynb') == (run / 'english' / 'x.ipynb', 'english')
    (run / 'all').mkdir(); (run / 'all' / 'x.ipynb').write_text('{}')
    assert bd.executed_nb(run, 'x.ipynb')[1] == 'all'
    assert bd.executed_nb(run, 'y.ipynb') == (None, None)
    assert bd.split_directives('#| export\n#| echo: false\nx = 1') == ({'export': [], 'echo': ['false']}, 'x = 1')


def test_execute(tmp_path):
    "--execute runs a notebook in a kernel (figures inline even under MPLBACKEND=Agg) and caches it."
    nbs = tmp_path / 'nbs'; nbs.mkdir()
    shutil.copy(REPO / 'nbs' / 'index.ipynb', nbs); shutil.copytree(REPO / 'nbs' / 'images', nbs / 'images')
    cell = lambda t, s: {'cell_type': t, 'metadata': {}, 'source': s, **({'outputs': [], 'execution_count': None} if t == 'code' else {})}
    nb = {'cells': [cell('markdown', '# A plot\n\n> one figure'),
                    cell('code', 'import matplotlib.pyplot as plt\nplt.plot([1, 3, 2]); plt.title("three"); plt.show()\nprint("done")'),
                    cell('code', '#| notest\nraise RuntimeError("a skipped cell")')],
          'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}},
          'nbformat': 4, 'nbformat_minor': 5}
    (nbs / '01_plot.ipynb').write_text(json.dumps(nb))
    os.environ.setdefault('MPLBACKEND', 'Agg')
    res = bd.build(tmp_path / 'site', execute=True, nbs=nbs, exec_cache=tmp_path / 'cache')
    assert res['pages'] == ['index', '01_plot', 'api']
    page = tmp_path / 'site' / '01_plot.html'
    assert 'done' in page.read_text() and 'executed by the docs build' in page.read_text()
    assert len([s for s in parse(page).imgs if s.startswith('_images/')]) == 1
    cached = list((tmp_path / 'cache').glob('01_plot-*.ipynb'))
    assert len(cached) == 1
    t = cached[0].stat().st_mtime_ns
    bd.build(tmp_path / 'site', execute=True, nbs=nbs, exec_cache=tmp_path / 'cache')    # a rebuild executes nothing
    assert cached[0].stat().st_mtime_ns == t


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason='Chromium/chromedriver not installed (Debian: apt-get install chromium chromium-driver); '
                           'the HTML link and figure checks above still ran')
def test_in_chromium(site):
    "In headless Chromium every page loads, has its title, and every image on it is decoded (naturalWidth > 0)."
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    out, res = site
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--window-size=1400,1000'):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        seen = {}
        for s in res['pages']:
            drv.get((out / f'{s}.html').as_uri())
            drv.execute_async_script("""const done = arguments[arguments.length - 1];
                Promise.all([...document.images].map(i => i.complete ? 1 : new Promise(r => { i.onload = i.onerror = r; })))
                       .then(() => done(1));""")
            imgs = drv.execute_script("return [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth])")
            assert drv.execute_script('return document.readyState') == 'complete', s
            assert drv.title and 'culturellm' in drv.title, (s, drv.title)
            assert drv.find_elements('css selector', 'article h1'), f'{s}: no heading rendered'
            broken = [src for src, w in imgs if not w]
            assert not broken, f'{s}: images that did not load: {broken}'
            seen[s] = len(imgs)
        assert seen['index'] >= 1 and seen['00_seeds'] >= 1, seen
    finally:
        drv.quit()


def test_run_files(tmp_path):
    "Markdown output linking to files of the run folder (a report's figures and PDFs): copied into the site, relinked."
    nbs = tmp_path / 'nbs'; nbs.mkdir()
    shutil.copy(REPO / 'nbs' / 'index.ipynb', nbs); shutil.copytree(REPO / 'nbs' / 'images', nbs / 'images')
    md = ('# Report\n\n![the map](figures/map.png)\n\n[pdf](figures/map.pdf), ![absent](figures/none.png), '
          '[elsewhere](https://example.org/x.png)\n')
    cells = [{'cell_type': 'markdown', 'metadata': {}, 'source': '# Analysis'},
             {'cell_type': 'code', 'metadata': {}, 'execution_count': 1, 'source': 'display(Markdown(report))',
              'outputs': [{'output_type': 'display_data', 'metadata': {},
                           'data': {'text/markdown': md, 'text/plain': '<Markdown>'}}]}]
    nb = {'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}
    (nbs / '07_report.ipynb').write_text(json.dumps(dict(nb, cells=cells[:1])))
    run = tmp_path / 'run'; (run / 'all').mkdir(parents=True); (run / 'figures').mkdir()
    (run / 'all' / '07_report.ipynb').write_text(json.dumps(nb))
    shutil.copy(REPO / 'nbs' / 'images' / 'country_map.png', run / 'figures' / 'map.png')
    (run / 'figures' / 'map.pdf').write_bytes(b'%PDF-1.4\n%%EOF\n')
    (run / 'manifest.json').write_text(json.dumps({'profile': 'cpu', 'cultures': ['arabic'],
                                                   'stages': {'report/all': {'notebook': 'all/07_report.ipynb', 'status': 'error'}}}))
    out = tmp_path / 'site'
    bd.build(out, runs=[run], nbs=nbs)
    page = out / '07_report.html'
    p = parse(page)
    imgs = [s for s in p.imgs if s.startswith('_images/')]
    assert len(imgs) == 1 and (out / imgs[0]).read_bytes() == (run / 'figures' / 'map.png').read_bytes()
    pdf = [r for t, r in p.refs if r.endswith('map.pdf')]
    assert len(pdf) == 1 and (out / pdf[0]).read_bytes().startswith(b'%PDF')
    text = text_of(page)
    assert 'figures/none.png of the run folder: not available' in text
    assert 'recorded this stage as error' in text
    assert 'href="https://example.org/x.png"' in page.read_text()


def test_no_build_machine_path_on_a_page(site, run_dir):
    """The executed notebooks' parameters (run_dir, config_file) and outputs show paths relative to the run folder, never
    the absolute paths of the machine that ran them."""
    out, _ = site
    html = (out / '00_seeds.html').read_text()
    for p in (str(run_dir.resolve()), str(REPO), str(Path.home())):
        assert p not in html, p
    assert "run_dir" in html and "config.json" in html
    nb = {'cells': [{'cell_type': 'code', 'source': f"run_dir = '{run_dir}'\nconfig_file = '{run_dir}/config.json'",
                     'outputs': [{'output_type': 'stream', 'name': 'stdout', 'text': f"wrote {run_dir}/figures/x.png"}]}]}
    got = bd.relative_paths(nb, bd.path_mapping(run_dir, REPO))['cells'][0]
    assert got['source'] == "run_dir = '.'\nconfig_file = 'config.json'" and got['outputs'][0]['text'] == 'wrote figures/x.png'
