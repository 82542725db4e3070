"""Benchmark: culturellm's option scorer (`LocalLM.score_options`) against lm-evaluation-harness (`HFLM.loglikelihood`).

Both score the same (prompt, option) pairs with the same local model folder (SmolLM2-135M-Instruct) at the same dtype,
in one process, on the same CPU threads. Items are real and in the prompts the studies use: binary classification
items from the CultureLLM downstream test sets (several tasks and languages, drawn with a fixed seed) in CultureLLM's
evaluation format (system "You are an {Culture} chatbot ...", "If the following sentence is offensive, just say "OFF",
otherwise say "NOT_OFF" ...", the answers as options), rendered with the model's chat template; plus GeoMLaMA (English)
questions in Global Gallery's Alpaca prompt with the candidate answers as options.

Runs at fp32 and at bf16 (where the CPU has bf16 instructions) in one process and prints, for each: items/s for both
(median over repeats), their ratio, the largest per-option log-prob difference between the two implementations and how
often they pick the same option (argmax agreement); then the machine's matmul peak and the fraction of it our scorer
reaches. The headline dtype is bf16 where the CPU has it (the dtype the study scores in there), else fp32; max_abs_diff
on the last line is taken at fp32 (at bf16 two correct implementations differ by bf16 rounding, which says nothing about
either), argmax_agree at the headline dtype. Everything is also written to benchmarks/results/scoring.json (machine,
cores, CPU flags, versions, every run and median). The last line is

    scoring: ours=<items/s> baseline=<items/s> ratio=<x> max_abs_diff=<d> peak_fraction=<f> argmax_agree=<f>

Usage: python benchmarks/scoring.py [--quick] [--dtype bf16|fp32] [--items N] [--repeats R]
       [--batch-tokens T] [--row-tokens R] [--min-prefix K] [--hf-batch-size B] [--diff-dtypes bf16,fp32] [--threads N] [--sweep]
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
# CultureLLM's evaluation prompts (as `03_evaluate` describes them): system "You are an {Culture} chatbot that know {Culture} very well.",
# user "If the following sentence ..., just say X, otherwise say Y without explanation: {text}"; the options are X and Y
FAMILIES = {  # prompt_family -> (condition, yes answer, no answer)
    'offensive': ('is offensive', 'OFF', 'NOT_OFF'),
    'hate': ('contains hate speech', 'HS', 'NOT_HS'),
    'spam': ('is a spam tweet', 'Spam', 'NOT_Spam'),
    'vulgar': ('contains vulgar speech', 'Vulgar', 'NOT_Vulgar'),
    'hof': ('contains hate or offensive content', 'HOF', 'NOT'),
}
# one or two binary tasks per language, a mix of families and text lengths
TASKS = [('arabic', 'offensive_detect'), ('arabic', 'spam_detect'), ('bengali', 'hate_detect_religion'),
         ('chinese', 'bias_on_gender_detect'), ('english', 'offensive_detect_easy'), ('english', 'threat_detect'),
         ('germany', 'offensive_detect_eval'), ('germany', 'hate_off_detect'), ('korean', 'hate_detect_6'),
         ('portuguese', 'offensive_detect_3'), ('spanish', 'hate_detect_eval'), ('spanish', 'insult_detect'),
         ('turkish', 'offensive_detect'), ('turkish', 'spam_detect')]
MAX_CHARS = 600  # long comments (e.g. Toxic Comment threads) are cut to keep prompts tweet-sized

def data_root() -> Path:
    "The study data: $CULTURELLM_DATA, else ../shared/data beside the checkout (the package's and the tests' rule)."
    return Path(os.environ.get('CULTURELLM_DATA') or Path(__file__).resolve().parents[2] / 'shared' / 'data')

def _family(t:dict) -> tuple:
    "(condition, yes, no) of a binary task's prompt."
    if t['prompt_family'] in FAMILIES: return FAMILIES[t['prompt_family']]
    what = t['task'].replace('_detect', '').replace('_', ' ')    # entity_binary / expressing_binary: 'threat', 'insult', ...
    if t['prompt_family'] == 'expressing_binary': return (f'is expressing {what}', '1', '0')
    return (f'has {what} speech', '1', '0')

def binary_messages(t:dict, text:str) -> tuple:
    "(chat messages, [yes, no]) of one binary item in CultureLLM's evaluation format."
    cond, yes, no = _family(t); c = t['culture'].capitalize()
    return ([{'role': 'system', 'content': f'You are an {c} chatbot that know {c} very well.'},
             {'role': 'user', 'content': f'If the following sentence {cond}, just say "{yes}", otherwise say "{no}" without explanation: {text}'}],
            [yes, no])

def binary_items(n:int, seed:int=0) -> list:
    "`n` (chat messages, options, meta) triples from the binary CultureLLM test sets, drawn round-robin over `TASKS`."
    root = data_root()
    from importlib import resources
    shipped = json.loads((resources.files('culturellm') / 'data' / 'tasks.json').read_text())['tasks']   # the package's registry
    spec = {(t['culture'], t['task']): dict(t, prompt_family=t['family']) for t in shipped}
    rng, pools = random.Random(seed), []
    for key in TASKS:
        t = spec.get(key)
        if t is None or t.get('missing') or len(t['labels']) != 2: continue
        p = root / 'culturellm' / t['path']
        if not p.exists(): continue
        rows = [json.loads(l) for l in p.read_text(encoding='utf-8').split('\n') if l.strip()]
        rows = [r for r in rows if isinstance(r.get(t['text_field']), str) and r[t['text_field']].strip()]
        rng.shuffle(rows)
        pools.append([(*binary_messages(t, ' '.join(r[t['text_field']].split())[:MAX_CHARS]), f"{key[0]}/{key[1]}") for r in rows])
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

ALPACA = ('Below is an instruction that describes a task, paired with an input that provides further context. '
          'Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n'
          '### Input:\n{input}\n\n### Response:\n')
GEO_INSTRUCTION = ('You are an expert in global cultures and the subject matter of the question. Using that expertise, '
                   'identify the most accurate answer from the options provided.')

def geomlama_items(n:int, seed:int=0, lang:str='en') -> list:
    "`n` GeoMLaMA questions in Global Gallery's Alpaca prompt (as `06_gallery` asks it), the candidate answers (shuffled) as options."
    p = data_root() / 'global-gallery' / 'geomlama' / f'{lang}.csv'
    with open(p, newline='', encoding='utf-8') as f: rows = list(csv.DictReader(f))
    rng = random.Random(seed); rng.shuffle(rows)
    out = []
    for r in rows[:n]:
        opts = list(dict.fromkeys(_candidates(r['candidate_answers']))); rng.shuffle(opts)
        inp = f"Question: {r['question'].strip()} \nOptions: " + '\n'.join(f'({chr(65 + k)}) {o}' for k, o in enumerate(opts))
        out.append((ALPACA.format(instruction=GEO_INSTRUCTION, input=inp), opts, f"geomlama/{lang}/{r['country']}"))
    return out

def build_items(n:int, seed:int=0) -> list:
    "About 25% GeoMLaMA (at most the 150 English questions), the rest binary items; a fixed-seed shuffle of both."
    g = geomlama_items(min(150, n // 4), seed)
    items = g + binary_items(n - len(g), seed)
    random.Random(seed).shuffle(items)
    return items

# ------------------------------------------------------------------------------------------------------------- runners
def render(tok, items) -> list:
    "Items with chat prompts rendered to strings by the model's chat template: both scorers get the very same text."
    return [(p if isinstance(p, str) else tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True), o, m)
            for p, o, m in items]

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

def token_counts(lm, items) -> dict:
    """Token counts of our scorer's work on `items`:
    useful: prompt + option tokens; fed: what a scorer that runs each prompt once must feed (prompts, and option tokens
    but the last); unique: what ours must feed after running prompt prefixes shared across items once (`min_prefix`);
    computed: what our packed batches feed, padding included; head_positions: where the LM head runs (one per prompt, one per
    option token but the last); naive_pairs: what feeding every (prompt, option) pair whole costs."""
    from culturellm.llm import packed_tokens
    enc = []
    for p, os_, _ in items:
        pairs = [lm._encode_pair(p, o) for o in os_]; enc.append((pairs[0][0], [t for _, t in pairs]))
    prompt = sum(len(c) for c, _ in enc); opt = sum(len(t) for _, os_ in enc for t in os_)
    fed_opt = sum(len(t) - 1 for _, os_ in enc for t in os_)
    groups = lm._prefix_groups([c for c, _ in enc])
    unique = fed_opt + sum(K + sum(len(enc[i][0]) - K for i in idx) for K, idx in groups)
    batches = lm._pack(enc)
    size = lambda row: packed_tokens(enc, row)
    padded = sum(len(b) * max(map(size, b)) for b in batches)       # each batch pads its rows to its longest
    nb, ng = len(batches), sum(K > 0 for K, _ in groups)
    naive = sum(len(c) + len(t) - 1 for c, os_ in enc for t in os_)
    return dict(prompt=prompt, option=opt, useful=prompt + opt, fed=prompt + fed_opt, unique=unique, computed=padded,
                batches=nb, rows=sum(map(len, batches)), prefix_groups=ng, head_positions=len(enc) + fed_opt, naive_pairs=naive)

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

def matmul_peak(dtypes=('fp32', 'bf16'), n:int=2048, repeats:int=10) -> dict:
    "Median GFLOP/s of an n x n matmul in each of `dtypes` (bf16 only where the CPU has bf16 instructions: emulated bf16 is ~100x slower)."
    import torch
    from culturellm.llm import cpu_has_bf16
    out = {}
    for name in dtypes:
        if name == 'bf16' and not cpu_has_bf16(): continue
        dt = {'fp32': torch.float32, 'bf16': torch.bfloat16}[name]
        a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        for _ in range(3): torch.matmul(a, b)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter(); torch.matmul(a, b); ts.append(time.perf_counter() - t0)
        out[name] = 2 * n ** 3 / statistics.median(ts) / 1e9
    return out

def machine() -> dict:
    "The processor (its model name), cores, Python and the CPU's vector flags."
    import platform
    info = Path('/proc/cpuinfo').read_text().splitlines() if Path('/proc/cpuinfo').exists() else []
    field = lambda key: next((l.split(':', 1)[1].strip() for l in info if l.startswith(key)), '')
    return dict(processor=field('model name') or platform.processor() or platform.machine(), cores=os.cpu_count(),
                python=platform.python_version(), cpu_flags=[f for f in field('flags').split() if f.startswith(('avx', 'amx', 'fma', 'sse4'))])

def write_results(name:str, res:dict) -> Path:
    "benchmarks/results/<name>.json: `res` with the machine (`machine`), the package versions and the date."
    from culturellm.run import package_versions
    p = Path(__file__).resolve().parent / 'results' / f'{name}.json'
    p.parent.mkdir(exist_ok=True)
    p.write_text(json.dumps(dict(res, machine=machine(), versions=package_versions(), when=time.strftime('%Y-%m-%d')), indent=1, default=str) + '\n')
    return p

def _g(x:float, d:int=4) -> str: return f'{x:.{d}g}'

# ---------------------------------------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='48 items, 1 repeat, headline dtype only (about a minute)')
    ap.add_argument('--dtype', default=None, help='headline dtype: bf16 or fp32 (default: bf16 if the CPU has it)')
    ap.add_argument('--items', type=int, default=None, help='number of items (default 600; 48 with --quick)')
    ap.add_argument('--repeats', type=int, default=None, help='timed repeats, median reported (default 3; 1 with --quick)')
    ap.add_argument('--batch-tokens', type=int, default=None, help="LocalLM's batch_tokens (default: its own)")
    ap.add_argument('--row-tokens', type=int, default=512, help="LocalLM's row_tokens")
    ap.add_argument('--min-prefix', type=int, default=8, help="LocalLM's min_prefix (0: no prefix sharing across items)")
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
    n = a.items or (48 if a.quick else 600); R = a.repeats or (1 if a.quick else 3)
    diff = [d for d in (a.diff_dtypes.split(',') if a.diff_dtypes else ([headline] if a.quick else sorted({headline, 'fp32'}, key=lambda d: d != headline))) if d]
    print(f'torch {torch.__version__}, transformers {transformers.__version__}, lm_eval {lm_eval.__version__ if hasattr(lm_eval, "__version__") else "?"}; '
          f'{torch.get_num_threads()} threads; cpu bf16: {cpu_has_bf16()}', flush=True)

    from transformers import AutoTokenizer
    from culturellm.llm import resolve_model
    t0 = time.perf_counter(); items = render(AutoTokenizer.from_pretrained(resolve_model()[0]), build_items(n, a.seed))
    src = {}
    for *_, m in items: k = m.split('/')[0]; src[k] = src.get(k, 0) + 1
    nopt = sum(len(o) for _, o, _ in items)
    print(f'{len(items)} items, {nopt} options ({time.perf_counter() - t0:.1f}s to build): ' + ', '.join(f'{k} {v}' for k, v in sorted(src.items())))

    peak = matmul_peak()
    print('matmul peak (2048x2048, median of 10): ' + ', '.join(f'{k} {v:.1f} GFLOP/s' for k, v in peak.items())
          + ('' if 'bf16' in peak else ' (no bf16 instructions on this CPU: bf16 not measured)'), flush=True)

    results = {}
    for dt in diff:
        timed = True                                                   # every dtype is timed: the ratio is reported at each
        reps = R
        print(f'\n== {dt} (timed, {reps} repeats)', flush=True)
        lm = LocalLM(dtype=dt, cache=None, batch_tokens=a.batch_tokens, row_tokens=a.row_tokens, min_prefix=a.min_prefix)
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
        tc = token_counts(lm, items)
        params = sum(p.numel() for p in lm.model.parameters())
        head = lm.model.get_output_embeddings().weight.numel(); emb = lm.model.get_input_embeddings().weight.numel()
        body = params - emb - (0 if lm.model.get_output_embeddings().weight is lm.model.get_input_embeddings().weight else head)
        flops = 2 * body * tc['unique'] + 2 * head * tc['head_positions']  # the work our method must do, padding excluded
        results[dt] = dict(ours=len(items) / to, base=len(items) / tb, t_ours=to, t_base=tb, diff=d, agree=agree, tc=tc, params=params,
                           lp_ours=lo, lp_base=lb, other=other, flops=flops, body=body, head=head)
        print(f'  ours:     median {to:.2f}s  -> {len(items) / to:.1f} items/s (batch_tokens={lm.batch_tokens}, row_tokens={lm.row_tokens}; runs {", ".join(f"{t:.2f}" for t in tso)})')
        print(f'  baseline: median {tb:.2f}s  -> {len(items) / tb:.1f} items/s (HFLM batch_size={a.hf_batch_size}; runs {", ".join(f"{t:.2f}" for t in tsb)})')
        print(f'  ratio {tb / to:.2f}x; max |logprob ours - lm-eval| = {d:.3g} over {nopt} options; same argmax on {100 * agree:.1f}% of items')
        gf = flops / to / 1e9
        results[dt].update(gflops=gf, runs_ours=tso, runs_base=tsb)
        print(f"  tokens: prompt {tc['prompt']} + option {tc['option']} = {tc['useful']} useful; feeding each prompt once: {tc['fed']}; "
              f"after sharing prompt prefixes across items ({tc['prefix_groups']} groups): {tc['unique']} "
              f"({1 - tc['unique'] / tc['fed']:.0%} less); our batches feed {tc['computed']} (padding {tc['computed'] / tc['unique'] - 1:+.0%}, "
              f"{tc['rows']} packed rows in {tc['batches']} batches); every (prompt, option) pair whole: {tc['naive_pairs']}")
        print(f"  our FLOP rate: (2 x {body / 1e6:.1f}M layer params x {tc['unique']} tokens + 2 x {head / 1e6:.1f}M head params x "
              f"{tc['head_positions']} predicting positions) / {to:.2f}s = {gf:.1f} GFLOP/s ("
              + ', '.join(f'{gf / v:.1%} of {k} peak' for k, v in peak.items()) + ')')
        if a.sweep and dt == headline:
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
          + (f' (fp32 peak: {h["gflops"] / peak["fp32"]:.3g})' if headline != 'fp32' else ''))
    print(f'goal ratio>=3: {"met" if h["ours"] / h["base"] >= 3 else "NOT met"}; goal max_abs_diff<=0.01 (at {exact}): {"met" if dmax <= 0.01 else "NOT met"}')
    for dt, r in results.items():
        print(f'{dt}: ours {r["ours"]:.1f} items/s, baseline {r["base"]:.1f} items/s, ratio {r["ours"] / r["base"]:.2f}x, '
              f'max_abs_diff {r["diff"]:.3g}, argmax_agree {r["agree"]:.3f}')
    if not a.quick:
        write_results('scoring', dict(items=len(items), options=nopt, repeats=R, headline=headline, peak_gflops=peak,
                                      baseline_setup=f'lm-eval HFLM.loglikelihood, batch_size={a.hf_batch_size}',
                                      max_abs_diff=dmax, max_abs_diff_dtype=exact, peak_fraction=frac,
                                      dtypes={dt: dict(ours=r['ours'], baseline=r['base'], ratio=r['ours'] / r['base'], max_abs_diff=r['diff'],
                                                       argmax_agree=r['agree'], gflops=r['gflops'], others=r['other'],
                                                       seconds_ours=r['runs_ours'], seconds_baseline=r['runs_base'], tokens=r['tc'])
                                              for dt, r in results.items()}))
    print(f'scoring: ours={_g(h["ours"])} baseline={_g(h["base"])} ratio={_g(h["ours"] / h["base"], 3)} max_abs_diff={_g(dmax, 3)} '
          f'peak_fraction={_g(frac, 3)} argmax_agree={_g(h["agree"], 3)}')

if __name__ == '__main__': main()
