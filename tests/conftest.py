"""Shared fixtures: where the CultureLLM data (the original release's `data/` folder) lie."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def data_root() -> Path:
    """The folder holding `culturellm/`: $CULTURELLM_DATA, else `<repo>/../shared/data`.

    Absent data skip the test, unless CULTURELLM_REQUIRE_DATA=1, which makes it fail."""
    env = os.environ.get('CULTURELLM_DATA')
    root = Path(env).expanduser() if env else REPO.parent / 'shared' / 'data'
    if not (root / 'culturellm').is_dir():
        why = (f"CultureLLM data not found: {root / 'culturellm'} is not a folder "
               f"({'from $CULTURELLM_DATA' if env else 'default location'}); set CULTURELLM_DATA=<folder holding culturellm/>")
        if os.environ.get('CULTURELLM_REQUIRE_DATA') == '1': pytest.fail(why)
        pytest.skip(why)
    return root.resolve()


@pytest.fixture(scope='session')
def smoke_run(tmp_path_factory):
    """One `culturellm run --profile smoke` into a fresh folder, timed: (folder, CompletedProcess, seconds). Shared by
    every test module, and by every pytest-xdist worker (the first to take the lock runs it; the others wait and read it)."""
    import json, subprocess, sys, time
    from filelock import FileLock
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base
    out, done = shared / 'smoke-run' / 'smoke', shared / 'smoke-run.json'
    with FileLock(str(shared / 'smoke-run.lock')):
        if not done.exists():
            t = time.time()
            r = subprocess.run([sys.executable, '-c', 'import sys; from culturellm.run import main; sys.exit(main())',
                                'run', '--profile', 'smoke', '--out', str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
            done.write_text(json.dumps(dict(returncode=r.returncode, stdout=r.stdout, stderr=r.stderr, seconds=time.time() - t)))
    d = json.loads(done.read_text())
    return out, subprocess.CompletedProcess([], d['returncode'], d['stdout'], d['stderr']), d['seconds']
