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
