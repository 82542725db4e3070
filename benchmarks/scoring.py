"""Benchmark: culturellm's option scorer (`LocalLM.score_options`) against lm-evaluation-harness (`HFLM.loglikelihood`).

Both score the same (prompt, option) pairs with the same local model folder (SmolLM2-135M-Instruct) at the same dtype,
in one process, on the same CPU threads. Items are real: binary classification items from the CultureLLM downstream
test sets (several tasks and languages, drawn with a fixed seed) plus GeoMLaMA (English) multiple-choice questions.

Prints items/s for both (median over repeats), their ratio, the largest per-option log-prob difference, the machine's
matmul peak and the fraction of it our scorer reaches. The last line is

    scoring: ours=<items/s> baseline=<items/s> ratio=<x> max_abs_diff=<d> peak_fraction=<f>

Usage: python benchmarks/scoring.py [--quick] [--dtype bf16|fp32] [--items N] [--repeats R]
       [--batch-tokens T] [--hf-batch-size B] [--diff-dtypes bf16,fp32] [--threads N] [--sweep]
Needs lm-eval (pip install "lm-eval[hf]>=0.4.13"); no network (set HF_HUB_OFFLINE=1).
"""
from __future__ import annotations

import argparse, ast, csv, json, os, random, statistics, sys, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))

# ---------------------------------------------------------------------------------------------------------------- data
QUESTIONS = {  # prompt_family -> question (binary families only)
    'offensive': 'Is the following sentence offensive?',
    'hate': 'Does the following sentence contain hate speech?',
    'spam': 'Is the following message spam?',
    'vulgar': 'Is the following sentence vulgar?',
    'hof': 'Is the following sentence hateful or offensive?',
}
# one or two binary tasks per language, a mix of families and text lengths
TASKS = [('arabic', 'offensive_detect'), ('arabic', 'spam_detect'), ('bengali', 'hate_detect_religion'),
         ('chinese', 'bias_on_gender_detect'), ('english', 'offensive_detect_easy'), ('english', 'threat_detect'),
         ('germany', 'offensive_detect_eval'), ('germany', 'hate_off_detect'), ('korean', 'hate_detect_6'),
         ('portuguese', 'offensive_detect_3'), ('spanish', 'hate_detect_eval'), ('spanish', 'insult_detect'),
         ('turkish', 'offensive_detect'), ('turkish', 'spam_detect')]
MAX_CHARS = 600  # long comments (e.g. Toxic Comment threads) are cut to keep prompts tweet-sized

def data_root() -> Path: return Path(os.environ.get('CULTURELLM_DATA') or '/work/shared/data')

def _question(t:dict) -> str:
    if t['prompt_family'] in QUESTIONS: return QUESTIONS[t['prompt_family']]
    what = t['task'].replace('_detect', '').replace('_', ' ')    # entity_binary / expressing_binary: 'threat', 'insult', ...
    return f'Does the following sentence contain {what}?'

def binary_items(n:int, seed:int=0) -> list:
    "`n` (prompt, options, meta) triples from the binary CultureLLM test sets, drawn round-robin over `TASKS`."
    root = data_root()
    spec = {(t['culture'], t['task']): t for t in json.loads(Path(os.environ.get('CULTURELLM_TASKS') or
            '/work/shared/docs/culturellm-tasks.json').read_text())}
    rng, pools = random.Random(seed), []
    for key in TASKS:
        t = spec.get(key)
        if t is None or t.get('missing') or len(t['labels']) != 2: continue
        p = root / 'culturellm' / t['path']
        if not p.exists(): continue
        rows = [json.loads(l) for l in p.read_text(encoding='utf-8').split('\n') if l.strip()]
        rows = [r for r in rows if isinstance(r.get(t['text_field']), str) and r[t['text_field']].strip()]
        rng.shuffle(rows)
        q = _question(t)
        pools.append([(f"{q} Answer yes or no.\nSentence: {' '.join(r[t['text_field']].split())[:MAX_CHARS]}\nAnswer:",
                       [' yes', ' no'], f"{key[0]}/{key[1]}") for r in rows])
    if not pools: raise FileNotFoundError(f'no binary task data under {root}/culturellm')
    out, k = [], 0
    while len(out) < n and any(pools):
        if pools[k % len(pools)]: out.append(pools[k % len(pools)].pop())
        k += 1
    return out

def _candidates(s:str) -> list:
    s = s.strip()
    if s.startswith('['):
        try: return [str(c).strip() for c in ast.literal_eval(s)]
        except (ValueError, SyntaxError): pass
    return [c.strip() for c in s.split(',') if c.strip()]

def geomlama_items(n:int, seed:int=0, lang:str='en') -> list:
    "`n` GeoMLaMA questions as 'Q: ... A:' prompts with the candidate answers (leading space) as options."
    p = data_root() / 'global-gallery' / 'geomlama' / f'{lang}.csv'
    with open(p, newline='', encoding='utf-8') as f: rows = list(csv.DictReader(f))
    random.Random(seed).shuffle(rows)
    out = []
    for r in rows[:n]:
        opts = list(dict.fromkeys(' ' + c for c in _candidates(r['candidate_answers'])))
        out.append((f"Q: {r['question'].strip()}\nA:", opts, f"geomlama/{lang}/{r['country']}"))
    return out

def build_items(n:int, seed:int=0) -> list:
    "About 25% GeoMLaMA (at most the 150 English questions), the rest binary items; a fixed-seed shuffle of both."
    g = geomlama_items(min(150, n // 4), seed)
    items = g + binary_items(n - len(g), seed)
    random.Random(seed).shuffle(items)
    return items

# ------------------------------------------------------------------------------------------------------------- runners
def run_ours(lm, items, progress=False):
    "(seconds, per-item option log-probs) of `LocalLM.score_options` on `items`."
    pairs = [(p, o) for p, o, _ in items]
    t0 = time.perf_counter(); res = lm.score_options(pairs, progress=progress); t = time.perf_counter() - t0
    return t, [list(map(float, r.logprob)) for r in res]

def run_baseline(hf, items, progress=False):
    "(seconds, per-item option log-probs) of lm-eval's `HFLM.loglikelihood`, one request per (prompt, option)."
    from lm_eval.api.instance import Instance
    reqs = [Instance(request_type='loglikelihood', doc={}, arguments=(p, o), idx=j) for p, os_, _ in items for j, o in enumerate(os_)]
    t0 = time.perf_counter(); res = hf.loglikelihood(reqs, disable_tqdm=not progress); t = time.perf_counter() - t0
    out, k = [], 0
    for _, os_, _ in items: out.append([float(ll) for ll, _ in res[k:k + len(os_)]]); k += len(os_)
    return t, out

def load_hf(path, dtype, batch_size):
    from lm_eval.models.huggingface import HFLM
    return HFLM(pretrained=path, device='cpu', dtype={'bf16': 'bfloat16', 'fp32': 'float32'}[dtype], batch_size=batch_size)

def check_tokens(lm, hf, items) -> int:
    "Both sides must split (context, option) into the same tokens; returns the number of mismatching pairs."
    bad = 0
    for p, os_, _ in items:
        for o in os_:
            a, b = lm._encode_pair(p, o), hf._encode_pair(p, o)
            bad += (list(a[0]), list(a[1])) != (list(b[0]), list(b[1]))
    return bad

def token_counts(lm, items, batch_tokens) -> dict:
    "Useful tokens (prompt once + options) and the tokens our batches actually compute, padding included."
    enc = []
    for p, os_, _ in items:
        pairs = [lm._encode_pair(p, o) for o in os_]; enc.append((pairs[0][0], [t for _, t in pairs]))
    prompt = sum(len(c) for c, _ in enc); opt = sum(len(t) for _, os_ in enc for t in os_)
    padded, fed_opt, nb = 0, 0, 0
    old = lm.batch_tokens; lm.batch_tokens = batch_tokens
    try: batches = lm._batches(enc)
    finally: lm.batch_tokens = old
    for b in batches:
        P = max(len(enc[i][0]) for i in b); opts = [t for i in b for t in enc[i][1]]; L = max(len(t) for t in opts) - 1
        padded += len(b) * P + (len(opts) * L if L > 0 else 0); fed_opt += sum(len(t) - 1 for t in opts); nb += 1
    # lm-eval feeds context + option[:-1] for every (context, option) pair, right-padded per batch (not modelled here)
    naive = sum(len(c) + len(t) - 1 for c, os_ in enc for t in os_)
    return dict(prompt=prompt, option=opt, useful=prompt + opt, computed=padded, fed_option=fed_opt, batches=nb,
                options=sum(len(os_) for _, os_ in enc), naive_pairs=naive)

def cpu_busy() -> tuple:
    "(CPU seconds all processes have spent busy, CPU seconds this process has spent, wall seconds): to see competing load."
    try: f = [int(x) for x in Path('/proc/stat').read_text().split('\n')[0].split()[1:]]
    except (OSError, ValueError): f = [0] * 8
    busy = (sum(f[:8]) - f[3] - f[4]) / os.sysconf('SC_CLK_TCK')           # all but idle and iowait
    t = os.times(); return busy, t.user + t.system, time.perf_counter()

def others_share(t0:tuple, t1:tuple) -> float:
    "Fraction of the machine's CPU time other processes used between two `cpu_busy` snapshots."
    wall = t1[2] - t0[2]
    return max(0.0, ((t1[0] - t0[0]) - (t1[1] - t0[1])) / (wall * (os.cpu_count() or 1))) if wall > 0 else 0.0

def matmul_peak(n:int=2048, repeats:int=10) -> dict:
    "Median GFLOP/s of an n x n matmul in fp32 and bf16."
    import torch
    out = {}
    for name, dt in (('fp32', torch.float32), ('bf16', torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        for _ in range(3): torch.matmul(a, b)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter(); torch.matmul(a, b); ts.append(time.perf_counter() - t0)
        out[name] = 2 * n ** 3 / statistics.median(ts) / 1e9
    return out

def _g(x:float, d:int=4) -> str: return f'{x:.{d}g}'

# ---------------------------------------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='120 items, 1 repeat, headline dtype only (under a minute)')
    ap.add_argument('--dtype', default=None, help='headline dtype: bf16 or fp32 (default: bf16 if the CPU has it)')
    ap.add_argument('--items', type=int, default=None, help='number of items (default 600; 120 with --quick)')
    ap.add_argument('--repeats', type=int, default=None, help='timed repeats, median reported (default 3; 1 with --quick)')
    ap.add_argument('--batch-tokens', type=int, default=4096, help="LocalLM's batch_tokens")
    ap.add_argument('--hf-batch-size', type=int, default=16, help="lm-eval HFLM's batch_size")
    ap.add_argument('--diff-dtypes', default=None, help='comma list of dtypes to compare log-probs at (default: fp32 and the headline dtype; headline only with --quick)')
    ap.add_argument('--threads', type=int, default=None, help="torch threads (default: torch's own, one per core)")
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--sweep', action='store_true', help='also time ours over batch_tokens values and HFLM over batch sizes')
    a = ap.parse_args(argv)

    import torch, transformers, lm_eval
    from culturellm.llm import LocalLM, cpu_has_bf16
    if a.threads: torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    import logging; logging.getLogger('lm_eval').setLevel(logging.WARNING)
    headline = a.dtype or ('bf16' if cpu_has_bf16() else 'fp32')
    n = a.items or (120 if a.quick else 600); R = a.repeats or (1 if a.quick else 3)
    diff = [d for d in (a.diff_dtypes.split(',') if a.diff_dtypes else ([headline] if a.quick else sorted({headline, 'fp32'}, key=lambda d: d != headline))) if d]
    print(f'torch {torch.__version__}, transformers {transformers.__version__}, lm_eval {lm_eval.__version__ if hasattr(lm_eval, "__version__") else "?"}; '
          f'{torch.get_num_threads()} threads; cpu bf16: {cpu_has_bf16()}', flush=True)

    t0 = time.perf_counter(); items = build_items(n, a.seed)
    src = {}
    for *_, m in items: k = m.split('/')[0]; src[k] = src.get(k, 0) + 1
    nopt = sum(len(o) for _, o, _ in items)
    print(f'{len(items)} items, {nopt} options ({time.perf_counter() - t0:.1f}s to build): ' + ', '.join(f'{k} {v}' for k, v in sorted(src.items())))

    peak = matmul_peak()
    print(f"matmul peak (2048x2048, median of 10): fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s", flush=True)

    results = {}
    for dt in diff:
        timed = dt == headline
        reps = R if timed else 1
        print(f'\n== {dt} ({"timed, " + str(reps) + " repeats" if timed else "log-prob check, 1 pass"})', flush=True)
        lm = LocalLM(dtype=dt, cache=None, batch_tokens=a.batch_tokens)
        hf = load_hf(lm.path, dt, a.hf_batch_size)
        bad = check_tokens(lm, hf, items)
        print(f'  model folder {lm.path}; tokenisation mismatches ours vs lm-eval: {bad}', flush=True)
        run_ours(lm, items[:8]); run_baseline(hf, items[:8])            # warm-up: first calls allocate and pick kernels
        tso, tsb = [], []; c0 = cpu_busy()
        for r in range(reps):   # interleaved, so that load from other processes hits both alike
            t, lo = run_ours(lm, items, reps == 1); tso.append(t); print(f'  repeat {r + 1}/{reps}: ours {t:.2f}s', flush=True)
            t, lb = run_baseline(hf, items, reps == 1); tsb.append(t); print(f'  repeat {r + 1}/{reps}: baseline {t:.2f}s', flush=True)
        to, tb = statistics.median(tso), statistics.median(tsb); other = others_share(c0, cpu_busy())
        print(f'  other processes used {other:.0%} of the CPU while timing', flush=True)
        d = max(abs(x - y) for u, v in zip(lo, lb) for x, y in zip(u, v))
        agree = sum(max(range(len(u)), key=u.__getitem__) == max(range(len(v)), key=v.__getitem__) for u, v in zip(lo, lb)) / len(lo)
        tc = token_counts(lm, items, a.batch_tokens)
        params = sum(p.numel() for p in lm.model.parameters())
        results[dt] = dict(ours=len(items) / to, base=len(items) / tb, t_ours=to, t_base=tb, diff=d, agree=agree, tc=tc, params=params,
                           lp_ours=lo, lp_base=lb, other=other)
        print(f'  ours:     median {to:.2f}s  -> {len(items) / to:.1f} items/s (batch_tokens={a.batch_tokens}; runs {", ".join(f"{t:.2f}" for t in tso)})')
        print(f'  baseline: median {tb:.2f}s  -> {len(items) / tb:.1f} items/s (HFLM batch_size={a.hf_batch_size}; runs {", ".join(f"{t:.2f}" for t in tsb)})')
        print(f'  ratio {tb / to:.2f}x; max |logprob ours - lm-eval| = {d:.3g} over {nopt} options; same argmax on {100 * agree:.1f}% of items')
        gf = 2 * params * tc['useful'] / to / 1e9
        gfc = 2 * params * tc['computed'] / to / 1e9
        results[dt].update(gflops=gf, gflops_computed=gfc)
        print(f"  tokens: prompt {tc['prompt']} + option {tc['option']} = {tc['useful']} useful; our batches compute {tc['computed']} "
              f"(padding overhead {tc['computed'] / tc['useful'] - 1:+.0%}, {tc['batches']} batches); lm-eval pairs would feed {tc['naive_pairs']}")
        print(f"  our FLOP rate: 2 x {params / 1e6:.1f}M params x {tc['useful']} tokens / {to:.2f}s = {gf:.1f} GFLOP/s "
              f"({gf / peak['bf16']:.1%} of bf16 peak, {gf / peak['fp32']:.1%} of fp32 peak); with padding {gfc:.1f} GFLOP/s")
        if a.sweep and timed:
            for bt in (1024, 2048, 4096, 8192, 16384):
                lm.batch_tokens = bt; t = statistics.median(run_ours(lm, items)[0] for _ in range(max(1, R // 2)))
                print(f'  sweep ours batch_tokens={bt}: {t:.2f}s -> {len(items) / t:.1f} items/s', flush=True)
            lm.batch_tokens = a.batch_tokens
            for bs in (4, 8, 16, 32, 64):
                hf.batch_size_per_gpu = bs; t = statistics.median(run_baseline(hf, items)[0] for _ in range(max(1, R // 2)))
                print(f'  sweep baseline batch_size={bs}: {t:.2f}s -> {len(items) / t:.1f} items/s', flush=True)
            hf.batch_size_per_gpu = a.hf_batch_size
        del lm, hf

    h = results[headline]
    exact = 'fp32' if 'fp32' in results else headline
    dmax = results[exact]['diff']
    frac = h['gflops'] / peak[headline]
    print(f'\nheadline ({headline}): ours {h["ours"]:.1f} items/s, baseline {h["base"]:.1f} items/s, ratio {h["ours"] / h["base"]:.2f}x')
    for dt, r in results.items(): print(f'max_abs_diff at {dt}: {r["diff"]:.3g}')
    if 'fp32' in results:                                                       # lower precision against the fp32 reference
        ref = results['fp32']['lp_ours']
        err = lambda lp: max(abs(x - y) for u, v in zip(lp, ref) for x, y in zip(u, v))
        for dt, r in results.items():
            if dt != 'fp32': print(f'{dt} error against our fp32 log-probs: ours {err(r["lp_ours"]):.3g}, lm-eval {err(r["lp_base"]):.3g}')
    busy = max(r['other'] for r in results.values())
    if busy > 0.05: print(f'WARNING: other processes used up to {busy:.0%} of the CPU while timing: with 2 busy threads each, '
                          'timings inflate far beyond that share; rerun on an idle machine')
    print(f'peak fraction: our {headline} FLOP rate {h["gflops"]:.1f} GFLOP/s / {headline} matmul peak {peak[headline]:.1f} GFLOP/s = {frac:.3g}'
          f' (fp32 peak: {h["gflops"] / peak["fp32"]:.3g})')
    print(f'goal ratio>=3: {"met" if h["ours"] / h["base"] >= 3 else "NOT met"}; goal max_abs_diff<=0.01 (at {exact}): {"met" if dmax <= 0.01 else "NOT met"}')
    print(f'scoring: ours={_g(h["ours"])} baseline={_g(h["base"])} ratio={_g(h["ours"] / h["base"], 3)} max_abs_diff={_g(dmax, 3)} peak_fraction={_g(frac, 3)}')

if __name__ == '__main__': main()
