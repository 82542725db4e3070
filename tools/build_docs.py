#!/usr/bin/env python
"""Build the documentation site, offline, from the notebooks in nbs/ (Sphinx + MyST-NB, furo theme).

    python tools/build_docs.py [--run DIR ...] [--execute] [--out _docs]

The site has three parts:
  * the home page: nbs/index.ipynb (the README's source);
  * one page per notebook nbs/*.ipynb (whatever notebooks exist, in file-name order), shown as nbdev shows
    them: `#| hide`/`exporti`/`default_exp` cells left out, each `#| export` cell replaced by the `show_doc`
    documentation (signature with docments, docstring) of what it defines;
  * an API reference page: every exported function and class of every module, and their public methods.

Where a notebook's results and figures come from:
  * `--run DIR` (repeatable): the executed notebooks of a run folder made by `culturellm run`
    (`DIR/<culture or all>/NN_name.ipynb`, with their figures); for a notebook executed for several cultures the
    first culture of the run's manifest is shown, and the page says which run, profile and culture it shows;
  * `--execute`: the notebooks a run folder does not give are executed here at the `smoke` profile, as the tests
    run them (each in its own kernel, from nbs/; cells flagged `notest`/`slow` skipped), cached under
    _proc/docs/ so that a rebuild with unchanged notebooks and library executes nothing (minutes from cold);
  * otherwise the notebook is shown unexecuted (its prose, code and tests, without outputs), and says so.
Without --run and --execute the build takes well under a minute.

The nbdev/Quarto configuration (nbs/_quarto.yml, nbs/nbdev.yml, settings.ini) is untouched: `nbdev_docs` builds
the Quarto site where Quarto is installed. This script needs only the `dev` extra (sphinx, myst-nb, furo).
"""
from __future__ import annotations

import argparse, ast, configparser, hashlib, importlib, inspect, json, os, re, shutil, sys, tempfile, time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP_FLAGS = ('notest', 'slow')          # settings.ini tst_flags: cells the tests (and --execute) skip
_DIRECTIVE = re.compile(r'^\s*#\|\s*(.*?)\s*$')
_ANSI = re.compile(r'\x1b\[[0-9;?]*[A-Za-z]')


def settings(repo:Path=REPO) -> dict:
    "settings.ini's [DEFAULT] section, interpolated."
    cp = configparser.ConfigParser(delimiters=['='])
    cp.read(repo / 'settings.ini', encoding='utf-8')
    return dict(cp['DEFAULT'])


# ---------------------------------------------------------------------------------------------- notebooks

def notebooks(nbs:Path) -> list:
    "The notebooks of the site: every nbs/*.ipynb but index.ipynb and those whose name starts with `_` or `.`."
    return [p for p in sorted(nbs.glob('*.ipynb')) if p.name != 'index.ipynb' and p.name[0] not in '_.']


def split_directives(src:str) -> tuple:
    "({directive: [args]}, source without its leading `#| ` lines), as nbdev reads cell directives."
    lines, d = src.splitlines(), {}
    i = 0
    while i < len(lines) and (m := _DIRECTIVE.match(lines[i])):
        words = m.group(1).split()
        if words: d[words[0].rstrip(':')] = words[1:]
        i += 1
    return d, '\n'.join(lines[i:]).strip('\n')


def read_nb(path:Path) -> dict:
    "A notebook as a dict, cell sources joined into strings; a one-line error names a file that is not one."
    try: nb = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e: raise SystemExit(f"build_docs: {path}: not a readable notebook ({e})")
    if not isinstance(nb.get('cells'), list): raise SystemExit(f"build_docs: {path}: no 'cells' list: not a notebook")
    for c in nb['cells']:
        if isinstance(c.get('source'), list): c['source'] = ''.join(c['source'])
        for o in c.get('outputs', []):
            if isinstance(o.get('text'), list): o['text'] = ''.join(o['text'])
    return nb


def default_exp(nb:dict) -> str|None:
    "The module a notebook exports to (`#| default_exp NAME`), or None."
    for c in nb['cells']:
        if c.get('cell_type') == 'code':
            d, _ = split_directives(c.get('source', ''))
            if 'default_exp' in d and d['default_exp']: return d['default_exp'][0]
    return None


def title_of(nb:dict, fallback:str) -> tuple:
    "(title, one-line description) from the notebook's `# Title` and `> description` markdown."
    for c in nb['cells']:
        if c.get('cell_type') != 'markdown': continue
        m = re.search(r'^#\s+(.+)$', c['source'], re.M)
        if m:
            desc = re.search(r'^>\s*(.+)$', c['source'], re.M)
            return m.group(1).strip(), (desc.group(1).strip() if desc else '')
    return fallback, ''


# ---------------------------------------------------------------------------------------------- show_doc

def show_doc_md(obj, name:str, level:int=3) -> str:
    "nbdev's `show_doc` for `obj` as MyST markdown: a heading, the signature with its docments, the docstring."
    from nbdev.showdoc import MarkdownRenderer
    body = MarkdownRenderer(obj, name=name)._repr_markdown_().strip()
    if inspect.isclass(obj):   # the signature is __init__'s: show it as the class's
        body = re.sub(r'^(```python\n)def ', r'\1class ', body)
        body = re.sub(r'\)\s*->\s*None:\n```', '):\n```', body, count=1)
    return f"{'#' * level} {name}\n\n{body}\n"


def defined_names(src:str) -> list:
    "Public top-level functions and classes a code cell defines (what nbdev documents after an exported cell)."
    try: tree = ast.parse(src)
    except SyntaxError: return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and not n.name.startswith('_')]


def import_module(lib:str, mod:str|None):
    "The exported module `lib.mod`, or None (with a warning) where it does not import."
    if not mod: return None
    try: return importlib.import_module(f'{lib}.{mod}')
    except Exception as e:
        print(f"build_docs: warning: {lib}.{mod} does not import ({type(e).__name__}: {e}); its show_doc is left out",
              file=sys.stderr)
        return None


# ---------------------------------------------------------------------------------------------- cells

def _md(src:str) -> dict: return {'cell_type': 'markdown', 'metadata': {}, 'source': src}


_HEADING_ID = re.compile(r'^(#{1,6} .*?)[ \t]*\{#([A-Za-z][\w-]*)\}[ \t]*$', re.M)


def heading_ids(src:str) -> str:
    "Quarto's explicit heading ids (`### D7 · title {#d7}`, which nbdev_docs renders) as MyST targets: `(d7)=` above the heading."
    return _HEADING_ID.sub(lambda m: f'({m.group(2)})=\n{m.group(1)}', src)


def _clean_stream(text:str) -> str:
    "A stream as a terminal would leave it: ANSI codes dropped, a line rewritten with \\r kept at its last state."
    text = _ANSI.sub('', text)
    return '\n'.join(l.rsplit('\r', 1)[-1] if '\r' in l.rstrip('\r') else l.rstrip('\r') for l in text.split('\n'))


_MD_LINK = re.compile(r'(!?)\[([^\]]*)\]\(\s*([^)\s]+)(\s+"[^"]*")?\s*\)')


def fix_md_links(text:str, bases:list, dest:Path|None) -> str:
    """Markdown output that links to files of the run folder (`![..](figures/x.png)`, `[pdf](figures/x.pdf)`): each
    file found under one of `bases` is copied into the site's sources (`dest/_run/`) and relinked; one not found
    becomes a note (an image) or plain text (a link). Links with a scheme, absolute paths and anchors are kept."""
    def sub(m):
        bang, txt, ref = m.group(1), m.group(2), m.group(3)
        if re.match(r'^[a-z][a-z0-9+.-]*:', ref, re.I) or ref.startswith(('/', '#')): return m.group(0)
        for b in bases:
            f = (Path(b) / ref.split('#')[0]).resolve()
            if f.is_file() and dest is not None:
                name = f"{hashlib.sha256(str(f).encode()).hexdigest()[:8]}_{f.name}"
                (dest / '_run').mkdir(exist_ok=True); shutil.copyfile(f, dest / '_run' / name)
                return f'{bang}[{txt}](_run/{name})'     # images: Sphinx copies them; other files: build() does
        if bang: return f'*(figure `{ref}` of the run folder: not available to this build)*'
        return f'{txt} (`{ref}`, not in this build)'
    return _MD_LINK.sub(sub, text)


def _clean_outputs(outputs:list, bases:list=(), dest:Path|None=None) -> list:
    keep = []
    for o in outputs:
        o = dict(o)
        if isinstance(o.get('data'), dict) and 'text/markdown' in o['data']:
            md = o['data']['text/markdown']
            o['data'] = dict(o['data'], **{'text/markdown': fix_md_links(''.join(md) if isinstance(md, list) else md,
                                                                         bases, dest)})
        if o.get('output_type') == 'stream':
            o['text'] = _clean_stream(o.get('text', ''))
            if not o['text'].strip(): continue
        data = o.get('data')
        if isinstance(data, dict):   # widgets have no offline view: keep their text fallback
            o['data'] = {k: v for k, v in data.items() if not k.startswith('application/vnd.jupyter.widget')}
            if not o['data']: continue
        keep.append(o)
    return keep


def relative_paths(nb:dict, mapping:dict) -> dict:
    """`nb` with the build machine's absolute paths in code and text outputs rewritten by `mapping` ({absolute path:
    what to show}; the longest first): the run folder as `.`, the data root as `$CULTURELLM_DATA`, the checkout as its
    relative paths, the home folder as `~`; a path mapped to '' becomes relative to it. Images are left as they are."""
    pairs = sorted(((str(k).rstrip('/'), v) for k, v in mapping.items()), key=lambda kv: -len(kv[0]))
    pairs = [(a, b) for a, b in pairs if len(a) > 1]         # never '/' (a home or root of '/' would rewrite every path)
    def fix(t):
        if isinstance(t, list): t = ''.join(t)
        for a, b in pairs: t = t.replace(a + '/', (b + '/') if b else '').replace(a, b or '.')   # '' : relative to it
        return t
    out = json.loads(json.dumps(nb))
    for c in out.get('cells', []):
        if c.get('cell_type') != 'code': continue
        c['source'] = fix(c.get('source', ''))
        for o in c.get('outputs', []):
            if 'text' in o: o['text'] = fix(o['text'])
            for k in ('text/plain', 'text/markdown', 'text/html'):
                if k in o.get('data', {}): o['data'][k] = fix(o['data'][k])
            if 'evalue' in o: o['evalue'] = fix(o['evalue'])
    return out


def path_mapping(run:Path|None, root:Path) -> dict:
    "What `relative_paths` rewrites for a page from the run folder `run` (None: a notebook executed in the checkout)."
    m = {str(root.resolve()): '', str(Path.home()): '~'}
    if run is not None:
        m[str(run.resolve())] = ''
        dr = (json.loads((run / 'manifest.json').read_text()).get('data_root') if (run / 'manifest.json').is_file() else None)
        if dr: m[str(dr)] = '$CULTURELLM_DATA'
    if os.environ.get('CULTURELLM_DATA'): m.setdefault(str(Path(os.environ['CULTURELLM_DATA']).resolve()), '$CULTURELLM_DATA')
    return m


def doc_cells(nb:dict, module, banner:str|None=None, bases:list=(), dest:Path|None=None) -> list:
    """The cells of a notebook's page, as nbdev shows them (see the module docstring); images that markdown outputs
    link to are looked for under `bases` and copied into `dest`."""
    cells, banner_done = [], banner is None
    for c in nb['cells']:
        kind, src = c.get('cell_type'), c.get('source', '')
        if kind == 'markdown':
            cells.append(_md(heading_ids(src)))
            if not banner_done and re.search(r'^#\s', src, re.M):   # the banner goes right below the title
                cells.append(_md(banner)); banner_done = True
            continue
        if kind != 'code': continue
        d, body = split_directives(src)
        if {'hide', 'exporti', 'default_exp'} & d.keys() or d.get('include') == ['false']: continue
        docs = []
        if {'export', 'exports'} & d.keys() and module is not None:
            for nm in defined_names(body):
                if hasattr(module, nm): docs.append(_md(show_doc_md(getattr(module, nm), nm)))
        if 'export' in d:
            cells.extend(docs); continue
        tags = [t for t in c.get('metadata', {}).get('tags', []) if t in ('parameters', 'injected-parameters')]
        if d.get('echo') == ['false']: tags.append('remove-input')
        if d.get('output') == ['false']: tags.append('remove-output')
        if not body.strip() and not c.get('outputs'): continue
        cells.append({'cell_type': 'code', 'execution_count': None, 'metadata': {'tags': tags} if tags else {},
                      'source': body, 'outputs': _clean_outputs(c.get('outputs', []), bases, dest)})
        cells.extend(docs)
    if not banner_done: cells.insert(0, _md(banner))
    return cells


def write_page(nb:dict, cells:list, dest:Path):
    "Write a page notebook (nbformat 4, python kernelspec kept) for MyST-NB."
    meta = {k: v for k, v in nb.get('metadata', {}).items() if k in ('kernelspec', 'language_info')}
    meta.setdefault('kernelspec', {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'})
    cells = [dict(c, id=f'c{i}') for i, c in enumerate(cells)]
    dest.write_text(json.dumps({'cells': cells, 'metadata': meta, 'nbformat': 4, 'nbformat_minor': 5}, indent=1),
                    encoding='utf-8')


# ---------------------------------------------------------------------------------------------- run folders

def run_info(run:Path) -> dict:
    "What a run folder says of itself (manifest.json): profile, cultures, creation time, revision."
    m = run / 'manifest.json'
    try: man = json.loads(m.read_text(encoding='utf-8')) if m.is_file() else {}
    except ValueError as e: raise SystemExit(f"build_docs: {m}: not valid JSON ({e})")
    status = {st.get('notebook'): st.get('status') for st in (man.get('stages') or {}).values() if isinstance(st, dict)}
    return dict(profile=man.get('profile'), cultures=list(man.get('cultures') or []), created=man.get('created'),
                git=(man.get('git') or {}), status=status)


def executed_nb(run:Path, name:str) -> tuple:
    """(path, unit) of the executed notebook `name` in the run folder `run`, or (None, None): the `all` unit first,
    then the manifest's cultures in order, then any other unit (alphabetical)."""
    info = run_info(run)
    units = ['all'] + info['cultures'] + sorted(p.name for p in run.iterdir() if p.is_dir())
    for u in dict.fromkeys(units):
        p = run / u / name
        if p.is_file(): return p, u
    return None, None


def run_banner(run:Path, unit:str, name:str) -> str:
    info = run_info(run); g = info['git']
    st = info['status'].get(f'{unit}/{name}')
    failed = (f" The run recorded this stage as **{st}**: the outputs stop at the cell that failed."
              if st not in (None, 'ok') else '')
    rev = f", revision `{g['revision'][:10]}`{' (uncommitted changes)' if g.get('dirty') else ''}" if g.get('revision') else ''
    who = 'for all cultures' if unit == 'all' else f'for culture `{unit}`'
    return (f"```{{note}}\nResults and figures on this page come from the run folder `{run.name}`: this notebook as "
            f"`culturellm run` executed it {who} at the `{info['profile']}` profile"
            f"{' on ' + info['created'][:10] if info['created'] else ''}{rev}.{failed}\n```")


def unexecuted_banner(name:str) -> str:
    return (f"```{{note}}\nThis page shows the notebook unexecuted (prose, code and tests, no outputs). Its results and "
            f"figures appear when the site is built from a run folder (`python tools/build_docs.py --run DIR`) "
            f"or with `--execute` (the notebook run here at the `smoke` profile).\n```")


def smoke_banner() -> str:
    return ("```{note}\nThis page shows the notebook as executed by the docs build at the `smoke` profile (tiny models, "
            "a few items: the outputs show the code works, not study results; build with `--run DIR` for those).\n```")


# ---------------------------------------------------------------------------------------------- --execute

def _fingerprint(nb_path:Path, lib:Path) -> str:
    h = hashlib.sha256(nb_path.read_bytes())
    for p in sorted(lib.rglob('*.py')): h.update(p.name.encode()); h.update(p.read_bytes())
    return h.hexdigest()[:16]


def execute_nb(nb_path:Path, lib:Path, cache:Path, timeout:int=900) -> Path|None:
    """`nb_path` executed at the smoke profile (from its folder, in its own kernel, `notest`/`slow` cells skipped),
    cached in `cache` by the notebook's and library's content; None (with a warning) if it fails."""
    import nbformat
    from nbclient import NotebookClient
    dest = cache / f'{nb_path.stem}-{_fingerprint(nb_path, lib)}.ipynb'
    if dest.is_file(): return dest
    nb = nbformat.read(nb_path, as_version=4)
    env_keep = {k: os.environ.get(k) for k in ('IN_TEST', 'MPLBACKEND')}
    os.environ['IN_TEST'] = '1'                          # as nbdev_test runs it
    os.environ.pop('MPLBACKEND', None)                   # Agg (test.sh) would keep figures out of the outputs
    t0 = time.time()
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name='python3',
                                resources={'metadata': {'path': str(nb_path.parent)}})
        with client.setup_kernel():
            for i, cell in enumerate(nb.cells):
                if cell.cell_type != 'code': continue
                if set(split_directives(cell.source)[0]) & set(SKIP_FLAGS): continue
                client.execute_cell(cell, i)
    except Exception as e:
        msg = str(e).strip().splitlines()
        print(f"build_docs: warning: executing {nb_path.name} failed ({type(e).__name__}: {msg[-1] if msg else ''}); "
              f"shown unexecuted", file=sys.stderr)
        return None
    finally:
        for k, v in env_keep.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob(f'{nb_path.stem}-*.ipynb'): old.unlink()
    tmp = dest.with_suffix('.tmp')
    nbformat.write(nb, tmp); tmp.replace(dest)
    print(f"build_docs: executed {nb_path.name} at smoke in {time.time() - t0:.0f} s", file=sys.stderr)
    return dest


# ---------------------------------------------------------------------------------------------- API page

def api_page(lib:str, pages:list) -> str:
    """The API reference: for each module (in notebook order) its notebook's title and description, a link to it,
    and `show_doc` for every public function and class in `__all__`, with the public methods of each class."""
    out = [f"# API reference\n\nEvery function and class that `{lib}` exports, with its signature, the "
           f"documentation of each parameter (docments) and its docstring, as nbdev's `show_doc` renders them. "
           f"Each module is generated from a notebook; the notebook explains why, with tests and figures.\n"]
    for page in pages:
        mod, stem, title, desc = page['mod'], page['stem'], page['title'], page['desc']
        if page['module'] is None: continue
        m = page['module']
        out.append(f"## {lib}.{mod}\n\n{desc}\n\nSource notebook: [{title}]({stem}.ipynb) (`nbs/{stem}.ipynb`), "
                   f"module `{lib}/{mod.replace('.', '/')}.py`.\n")
        names = getattr(m, '__all__', None) or [n for n in vars(m) if not n.startswith('_')]
        consts = []
        for nm in names:
            obj = getattr(m, nm, None)
            if obj is None: continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or getattr(obj, '__module__', None) != m.__name__:
                consts.append(nm); continue
            out.append(show_doc_md(obj, nm, 3))
            if inspect.isclass(obj):
                for attr, v in vars(obj).items():
                    if attr.startswith('_'): continue
                    f = v.__func__ if isinstance(v, (staticmethod, classmethod)) else v
                    if inspect.isfunction(f) or isinstance(v, property):
                        target = f.fget if isinstance(v, property) else f
                        out.append(show_doc_md(target, f'{nm}.{attr}', 4))
        if consts: out.append('Also exported: ' + ', '.join(f'`{c}`' for c in consts) + '.\n')
    return '\n'.join(out)


# ---------------------------------------------------------------------------------------------- Sphinx

CONF = '''\
# generated by tools/build_docs.py: do not edit
project = {title!r}
author = {author!r}
copyright = {copyright!r}
extensions = ["myst_nb"]
html_theme = "furo"
html_title = {title!r}
html_static_path = []
html_show_sourcelink = False
html_copy_source = False
source_suffix = {{".md": "myst-nb", ".ipynb": "myst-nb"}}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 4
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type", "misc.highlighting_failure"]
'''


def toctree(caption:str, docs:list) -> str:
    return "```{toctree}\n:hidden:\n:caption: " + caption + "\n\n" + '\n'.join(docs) + "\n```"


def build(out:Path, runs:list=(), execute:bool=False, nbs:Path|None=None, jobs:int=1, quiet:bool=True,
          exec_cache:Path|None=None) -> dict:
    """Build the site into `out` (replaced); returns {'pages': [names], 'sources': {name: where}, 'seconds', 'warnings'}."""
    t0 = time.time()
    nbs = Path(nbs or REPO / 'nbs').resolve()
    root = nbs.parent if (nbs.parent / 'settings.ini').is_file() else REPO   # the project the notebooks belong to
    cfg = settings(root)
    lib = cfg.get('lib_name', 'culturellm')
    libdir = root / cfg.get('lib_path', lib)
    exec_cache = Path(exec_cache) if exec_cache else root / '_proc' / 'docs'
    if str(root) not in sys.path: sys.path.insert(0, str(root))
    runs = [Path(r).resolve() for r in runs]
    for r in runs:
        if not r.is_dir(): raise SystemExit(f"build_docs: --run {r}: not a folder (expected a run folder made by `culturellm run`)")
    if not (nbs / 'index.ipynb').is_file(): raise SystemExit(f"build_docs: {nbs / 'index.ipynb'}: missing (the home page)")
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()) and not ((out / '.buildinfo').is_file() or (out / 'site_libs').is_dir()):
        raise SystemExit(f"build_docs: {out}: exists and is not a previous docs build (Sphinx or nbdev_docs); "
                         f"refusing to replace it")

    with tempfile.TemporaryDirectory(prefix='culturellm-docs-') as tmp:
        src = Path(tmp) / 'src'; src.mkdir()
        for d in nbs.iterdir():                     # assets the notebooks link to (images/)
            if d.is_dir() and d.name[0] not in '._': shutil.copytree(d, src / d.name)
        pages, sources = [], {}
        for p in notebooks(nbs):
            nb0 = read_nb(p)
            mod = default_exp(nb0)
            module = import_module(lib, mod)
            nb, banner, where, bases = nb0, None, 'unexecuted', []
            for r in runs:
                ex, unit = executed_nb(r, p.name)
                if ex is not None:
                    nb, banner, where, bases = read_nb(ex), run_banner(r, unit, p.name), f'{ex}', [r, ex.parent]
                    nb = relative_paths(nb, path_mapping(r, root))       # no path of the build machine on the page
                    break
            else:
                if execute and (ex := execute_nb(p, libdir, exec_cache)) is not None:
                    nb, banner, where = relative_paths(read_nb(ex), path_mapping(None, root)), smoke_banner(), f'executed at smoke ({ex})'
                else:
                    banner = unexecuted_banner(p.name)
            title, desc = title_of(nb0, p.stem)
            write_page(nb, doc_cells(nb, module, banner, bases, src), src / p.name)
            pages.append(dict(stem=p.stem, mod=mod, module=module, title=title, desc=desc))
            sources[p.name] = where

        (src / 'api.md').write_text(api_page(lib, pages), encoding='utf-8')
        index = read_nb(nbs / 'index.ipynb')
        cells = doc_cells(index, None)
        cells.append(_md(toctree('Study notebooks', [pg['stem'] for pg in pages])))
        cells.append(_md(toctree('Reference', ['api'])))
        write_page(index, cells, src / 'index.ipynb')
        sources['index.ipynb'] = 'nbs/index.ipynb'
        (src / 'conf.py').write_text(CONF.format(title=cfg.get('title', lib), author=cfg.get('author', ''),
                                                 copyright=cfg.get('copyright', '')), encoding='utf-8')

        from sphinx.cmd.build import build_main
        if out.exists(): shutil.rmtree(out)
        warn = Path(tmp) / 'warnings.txt'
        args = ['-b', 'html', '-d', str(Path(tmp) / 'doctrees'), '-j', str(jobs), '-w', str(warn), '-n']
        if quiet: args.append('-q')
        rc = build_main(args + [str(src), str(out)])
        warnings = [l for l in warn.read_text(encoding='utf-8').splitlines() if 'WARNING' in l or 'ERROR' in l] \
            if warn.is_file() else []
        if rc != 0: raise SystemExit(f"build_docs: sphinx-build failed (exit {rc}); see the messages above")
        if (src / '_run').is_dir(): shutil.copytree(src / '_run', out / '_run')   # run files linked from outputs
    (out / '.nojekyll').touch()
    return dict(pages=['index'] + [pg['stem'] for pg in pages] + ['api'], sources=sources,
                seconds=round(time.time() - t0, 1), warnings=warnings)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[1].split('\nThe nbdev/Quarto')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--run', action='append', default=[], metavar='DIR',
                    help='a run folder of `culturellm run` whose executed notebooks (with figures) to show; repeatable, the first that has a notebook wins')
    ap.add_argument('--execute', action='store_true',
                    help='execute at the smoke profile the notebooks no run folder gives (cached under _proc/docs/)')
    ap.add_argument('--out', default=str(REPO / '_docs'), help='output folder (replaced; default _docs/)')
    ap.add_argument('--nbs', default=str(REPO / 'nbs'), help='notebook folder (default nbs/)')
    ap.add_argument('--jobs', type=int, default=1, help='parallel Sphinx processes')
    ap.add_argument('--verbose', action='store_true', help="show Sphinx's progress")
    a = ap.parse_args(argv)
    res = build(Path(a.out), a.run, a.execute, Path(a.nbs), a.jobs, quiet=not a.verbose)
    for w in res['warnings']: print(w, file=sys.stderr)
    print(f"build_docs: {len(res['pages'])} pages into {Path(a.out).resolve()} in {res['seconds']} s "
          f"({len(res['warnings'])} warnings); open {Path(a.out).resolve() / 'index.html'}")
    for name, where in res['sources'].items(): print(f"  {name}: {where}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
