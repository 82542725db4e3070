#!/usr/bin/env bash
# The main job: install what is needed into .venv (once), then run the study at the `cpu` profile into
# outputs/cpu, one task at a time (measured faster here than two side by side: a culture's tasks are unequal). Extra arguments go to
# `culturellm run` (e.g. --cultures all, --jobs 2, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-env.sh
exec .venv/bin/culturellm run --profile cpu "$@"
