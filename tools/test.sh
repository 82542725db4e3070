#!/usr/bin/env bash
# The test command: install what is needed into .venv (once), then the checks CI makes:
#   1. notebooks are clean (nbdev_clean changes nothing)
#   2. the library is in sync with the notebooks (nbdev_export changes nothing)
#   3. README.md is in sync with nbs/index.ipynb
#   4. pytest over the notebooks (nbdev semantics) and tests/; running no test is a failure
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-env.sh
source .venv/bin/activate
export MPLBACKEND=Agg
# the study data: $CULTURELLM_DATA, else ../shared/data beside the checkout where it exists (notebooks read it too)
if [ -z "${CULTURELLM_DATA:-}" ] && [ -d ../shared/data/culturellm ]; then export CULTURELLM_DATA="$(cd ../shared/data && pwd)"; fi

fingerprint() { find "$@" -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' -print0 | sort -z | xargs -0 sha256sum; }

before=$(fingerprint nbs)
nbdev_clean
if [ "$(fingerprint nbs)" != "$before" ]; then
  echo "FAIL: notebooks were not clean; nbdev_clean has now cleaned them: review and commit nbs/" >&2; exit 1
fi
echo "ok: notebooks are clean"

before=$(fingerprint culturellm)
nbdev_export
if [ "$(fingerprint culturellm)" != "$before" ]; then
  echo "FAIL: culturellm/ was out of sync with nbs/; nbdev_export has now rewritten it: review and commit it" >&2; exit 1
fi
echo "ok: the library is in sync with the notebooks"

python tools/make_readme.py --check
echo "ok: README.md is in sync with nbs/index.ipynb"

set +e
python -m pytest -q -n 2 --dist loadfile tests "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "FAIL: pytest collected no tests" >&2; exit 1; fi
exit $rc
