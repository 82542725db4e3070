#!/usr/bin/env bash
# The main job: install what is needed into .venv (once), then run the study at the `cpu` profile into
# outputs/cpu, one task at a time (two side by side, `--jobs 2`, measured faster, but two kernels hold up to twice the memory). Extra arguments go to
# `culturellm run` (e.g. --cultures all, --jobs 2, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-env.sh
exec .venv/bin/culturellm run --profile cpu "$@"
