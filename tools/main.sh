#!/usr/bin/env bash
# The main job: install what is needed into .venv (once), then run the study at the `cpu` profile into
# outputs/cpu, two tasks of a stage side by side (each kernel with half the cores). Extra arguments go to
# `culturellm run` (e.g. --cultures all, --jobs 1, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-env.sh
exec .venv/bin/culturellm run --profile cpu --jobs 2 "$@"
