"""Tag the chapters' check cells, so that a study run can skip them.

A chapter interleaves its library (exported cells), the checks of that library (cells calling `test_eq`, `test_close`,
`test_fail`, ... or `assert`) and the study a run executes. The test command executes every cell; `culturellm run`
skips the cells tagged `check` (unless given `--checks`): a checked library needs no second check in every study
run, and at the smoke profile the checks were about a third of the run's time.

A cell is tagged `check` when it
  * is a code cell that is not exported, not `#| hide` and not the parameters cell,
  * holds a test call or an `assert` (or was tagged `check` by hand: a check without a test call, such as a
    figure drawn from toy data), and
  * does not read the run folder (`run`): the cells that check a study run's own outputs run with the study,
and no later untagged cell reads a name it binds or mutates (found by name analysis of every cell, repeated until
nothing changes). `--check` changes nothing and fails when a tag is missing or wrong.

    python tools/tag_checks.py           # (re)tag nbs/*.ipynb
    python tools/tag_checks.py --check   # exit 1 if a notebook's tags are stale
"""
from __future__ import annotations

import argparse, ast, json, re, symtable, sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TAG = 'check'
TEST = re.compile(r'\b(test_eq|test_close|test_fail|test_ne|test_is|test_warns|test_stdout|test_shuffled|test_eq_type)\(|^\s*assert\b', re.M)
DIRECTIVE = re.compile(r'\s*#\|\s*(export|exports|exporti|hide)\b')
RUN_NAMES = {'run'}   # a cell reading these checks the study run's own outputs: it stays in the run


def _code(src: str) -> str:
    "The cell's Python, without IPython magics, shell escapes and nbdev directives."
    return '\n'.join(l for l in src.split('\n') if not l.lstrip().startswith(('%', '!', '#|')))


class _TopLevel(ast.NodeVisitor):
    "First positions of the names a cell loads and stores at its top level, and the names whose objects it mutates."
    def __init__(self): self.loads, self.stores, self.mutated = {}, {}, set()
    def _store(self, name, node): self.stores.setdefault(name, (node.lineno, node.col_offset))
    def visit_FunctionDef(self, n):
        self._store(n.name, n)
        for d in n.decorator_list + n.args.defaults + [d for d in n.args.kw_defaults if d]: self.visit(d)
    visit_AsyncFunctionDef = visit_FunctionDef
    def visit_ClassDef(self, n):
        self._store(n.name, n)
        for d in n.decorator_list + n.bases: self.visit(d)
    def visit_Lambda(self, n):
        for d in n.args.defaults: self.visit(d)
    def visit_ListComp(self, n): self.visit(n.generators[0].iter)   # the rest lives in the comprehension's own scope
    visit_SetComp = visit_GeneratorExp = visit_DictComp = visit_ListComp
    def visit_Import(self, n):
        for a in n.names: self._store((a.asname or a.name).split('.')[0], n)
    visit_ImportFrom = visit_Import
    def visit_Assign(self, n):
        self.visit(n.value)
        for t in n.targets: self.visit(t)
    def visit_AugAssign(self, n):
        self.visit(n.value)
        if isinstance(n.target, ast.Name): self.loads.setdefault(n.target.id, (n.lineno, n.col_offset))
        self.visit(n.target)
    def visit_Name(self, n):
        (self.stores if isinstance(n.ctx, (ast.Store, ast.Del)) else self.loads).setdefault(n.id, (n.lineno, n.col_offset))
    def generic_visit(self, n):
        if isinstance(n, (ast.Attribute, ast.Subscript)) and isinstance(getattr(n, 'ctx', None), (ast.Store, ast.Del)):
            b = n.value
            while isinstance(b, (ast.Attribute, ast.Subscript)): b = b.value
            if isinstance(b, ast.Name): self.mutated.add(b.id)
        super().generic_visit(n)


def _nested_globals(table) -> set:
    "Names the functions, lambdas and comprehensions of a cell read from the notebook's namespace."
    out = set()
    for c in table.get_children():
        out |= {s.get_name() for s in c.get_symbols() if s.is_referenced() and s.is_global()} | _nested_globals(c)
    return out


def analyse(src: str, where: str = 'cell') -> tuple[set, set, set]:
    "(names bound, names mutated, names read before the cell binds them) of a code cell."
    code = _code(src)
    try: tree = ast.parse(code)
    except SyntaxError as e: raise SystemExit(f'{where}: not Python ({e.msg}, line {e.lineno})')
    v = _TopLevel(); v.visit(tree)
    free = {k for k, p in v.loads.items() if k not in v.stores or p < v.stores[k]}
    free |= _nested_globals(symtable.symtable(code, where, 'exec')) - set(v.stores)
    return set(v.stores), v.mutated, free


def plan(nb: dict, where: str = 'notebook') -> set[int]:
    "Indices of the cells of `nb` that should carry the check tag."
    cells = []
    for i, c in enumerate(nb['cells']):
        if c['cell_type'] != 'code': continue
        src = ''.join(c['source']); tags = c.get('metadata', {}).get('tags', [])
        bound, mutated, free = analyse(src, f'{where} cell {i}')
        plain = not DIRECTIVE.match(src) and 'parameters' not in tags and not (free & RUN_NAMES)
        cand = plain and (bool(TEST.search(src)) or TAG in tags)
        cells.append(dict(i=i, bound=bound, mutated=mutated, free=free, cand=cand))
    check = {c['i'] for c in cells if c['cand']}
    changed = True
    while changed:   # a check cell that binds (or mutates) what a later study cell reads is part of the study
        changed = False
        for k, y in enumerate(cells):
            if y['i'] in check: continue
            for name in y['free']:
                for z in reversed(cells[:k]):   # back to the cell that bound the name, through those that changed it
                    if name in z['mutated'] or name in z['bound']:
                        if z['i'] in check: check.discard(z['i']); changed = True
                        if name in z['bound']: break
    return check


def retag(path: Path, write: bool) -> list[str]:
    "Tag `path`'s check cells; the changes made (or, with write=False, needed) as lines."
    nb = json.loads(path.read_text())
    want, diffs = plan(nb, path.name), []
    for i, c in enumerate(nb['cells']):
        if c['cell_type'] != 'code': continue
        tags = c.get('metadata', {}).get('tags', [])
        if (i in want) != (TAG in tags):
            diffs.append(f"{path.name} cell {i} ({c.get('id')}): {'add' if i in want else 'remove'} tag {TAG!r}")
            new = [t for t in tags if t != TAG] + ([TAG] if i in want else [])
            if new: c.setdefault('metadata', {})['tags'] = new
            else: c.get('metadata', {}).pop('tags', None)
    if write and diffs: path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    return diffs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--check', action='store_true', help='change nothing; exit 1 when a tag is missing or wrong')
    ap.add_argument('notebooks', nargs='*', help='default: nbs/*.ipynb')
    a = ap.parse_args(argv)
    paths = [Path(p) for p in a.notebooks] or sorted((REPO / 'nbs').glob('*.ipynb'))
    diffs = [d for p in paths for d in retag(p, not a.check)]
    for d in diffs: print(d)
    if a.check and diffs:
        print(f'FAIL: {len(diffs)} check tag(s) stale: run python tools/tag_checks.py, then nbdev_clean', file=sys.stderr); return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
