"""The notebooks are the source and their cells are tests: run each one as `nbdev_test` would (same skip
rules, same working directory), and check the papermill contract every study notebook must keep."""
import json
from pathlib import Path

import pytest
import nbdev.test as nbtest   # not `from nbdev.test import test_nb`: pytest would collect it
from nbdev.config import get_config as nbdev_config

REPO = Path(__file__).resolve().parents[1]
NBS = sorted((REPO / 'nbs').glob('*.ipynb'))
NUMBERED = [p for p in NBS if p.name[:2].isdigit()]


def test_notebooks_found():
    "The study notebooks exist; a run of the suite that found none would prove nothing."
    assert {p.name for p in NUMBERED} >= {'00_seeds.ipynb', '08_config.ipynb', '09_run.ipynb'}
    assert (REPO / 'nbs' / 'index.ipynb').exists()


@pytest.mark.parametrize('nb', NBS, ids=[p.stem for p in NBS])
def test_notebook_runs(nb, monkeypatch):
    "Every cell of the notebook runs and its `test_eq` checks hold (nbdev semantics: `tst_flags` cells skipped)."
    cfg = nbdev_config(path=REPO)
    monkeypatch.setenv('IN_TEST', '1')   # restored after the test
    ok, secs = nbtest.test_nb(nb, skip_flags=cfg.tst_flags.split(), basepath=cfg.config_path)
    assert ok, f"{nb.name} failed (see the traceback above)"


@pytest.mark.parametrize('nb', NUMBERED, ids=[p.stem for p in NUMBERED])
def test_parameters_cell(nb):
    """Exactly one `parameters`-tagged cell (else papermill injects its values before the defaults, which
    then overwrite them, and the run silently uses the defaults), not exported, and holding only assignments."""
    cells = json.loads(nb.read_text())['cells']
    tagged = [c for c in cells if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(tagged) == 1, f"{nb.name}: {len(tagged)} cells tagged 'parameters'"
    src = ''.join(tagged[0]['source'])
    assert '#| export' not in src
    code = [l.split('#')[0].strip() for l in src.splitlines()]
    assert all(not l or '=' in l for l in code), f"{nb.name}: the parameters cell must only assign defaults"
