"""Benchmark: culturellm's LoRA training step (packed batches, shared prefixes, LM head on answer tokens) against TRL's
`SFTTrainer` on the same prompt-completion records with completion-only loss, everything else at TRL's defaults (each
batch padded to its longest sample; TRL's entropy and token accuracy over the vocabulary at every step). The older
comparison — TRL's default setup on chat messages, with loss on every token — is kept as a second, labelled line.

Both train the same model (SmolLM2-135M-Instruct), the same LoRA configuration (the `cpu` profile's: r 16 on every
linear layer), on the same samples in the same order, for the same number of optimizer steps, in one process, at the
same precision, with activation checkpointing off for both (TRL's own default turns it on, which would slow the
baseline by about a third for a reason that is not the method). The samples are real: one culture's training set
(the 50 WVS seed questions and augmented questions with the culture's answers), from a run folder's augment output,
else the original release's `new_WVQ_500.jsonl` under $CULTURELLM_DATA, else the seeds alone.

Throughput is the samples' own tokens (no padding counted) per second of training, median over repeats. Also printed:
the final losses (each over what its setup trains on: answer tokens for ours and the fair baseline, all tokens for the
chat one), the tokens each setup actually ran through the model, and our FLOP rate as a fraction of the machine's
measured matmul peak at the training precision. Everything is also written to benchmarks/results/finetune.json
(machine, cores, CPU flags, versions, every run and median). The last line is

    finetune: ours=<tok/s> baseline=<tok/s> ratio=<x> peak_fraction=<f> baseline_setup=trl_completion_only

Usage: python benchmarks/finetune.py [--quick] [--steps N] [--batch B] [--repeats R] [--run DIR] [--culture C] [--threads N]
"""
from __future__ import annotations

import argparse, os, statistics, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from scoring import cpu_busy, matmul_peak, others_share, write_results  # noqa: E402


def training_samples(culture:str, run:str|None, n:int, seed:int=0) -> tuple:
    "(chat records, where they came from): `n` samples of the culture's full training set, in a seeded order."
    import random
    from culturellm.augment import load_original
    from culturellm.finetune import culture_samples, load_augmented, variant_questions
    from culturellm.seeds import CULTURES, culture_answers, load_questions, wvs_counts
    qs = load_questions(); C = CULTURES[culture]
    if run and (Path(run) / 'data' / 'augmented.jsonl').exists(): aug, src = load_augmented(run), f'{run} (augment output)'
    else:
        f = Path(os.environ.get('CULTURELLM_DATA', ROOT.parent / 'shared' / 'data')) / 'culturellm' / 'new_WVQ_500.jsonl'
        aug, src = ({'a': [], 'b': load_original(f, qs)}, str(f)) if f.exists() else ({'a': [], 'b': []}, 'the 50 seeds only')
    recs, _ = culture_samples(variant_questions(qs, aug, 'wvs_ab'), C, culture_answers(C, wvs_counts(C)))
    random.Random(seed).shuffle(recs)
    return (recs * (n // len(recs) + 1))[:n], src


class Timer:
    "A TrainerCallback that times the steps after the first (model warm-up and first-batch costs left out)."
    def __new__(cls):
        from transformers import TrainerCallback
        class _T(TrainerCallback):
            t0 = t1 = None
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == 1: self.t0 = time.perf_counter()
                self.t1 = time.perf_counter()
        return _T()


SETUPS = {'ours': 'packed prompt-completion, loss on answer tokens (culturellm)',
          'baseline': "TRL SFTTrainer, the same prompt-completion records, completion-only loss, TRL's defaults (trl_completion_only)",
          'chat': "TRL SFTTrainer's default setup on chat messages, loss on every token (the older comparison)"}

def train_once(kind:str, recs:list, F, steps:int, seed:int=0) -> dict:
    "Train `steps` steps with one of `SETUPS` (ours, baseline, chat); tokens/s over steps 2..N."
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTTrainer
    from culturellm.training import PackedCollator, _sft_args, _trainer_class, load_base, train_device
    dev = train_device(F.precision, F.quantize)
    model, tok, _ = load_base(F.model, dev)
    pc = Dataset.from_list([{'prompt': r['messages'][:2], 'completion': r['messages'][2:]} for r in recs])
    if kind == 'ours': ds, cls, kw = pc, _trainer_class(), dict(data_collator=PackedCollator(tok.pad_token_id, F.row_tokens, micro_tokens=F.micro_tokens))
    elif kind == 'baseline': ds, cls, kw = pc, SFTTrainer, {}                                  # TRL: completion-only loss on prompt-completion data
    else: ds, cls, kw = Dataset.from_list([{'messages': r['messages']} for r in recs]), SFTTrainer, {}
    lora = LoraConfig(r=F.r, lora_alpha=F.alpha, lora_dropout=F.dropout, target_modules=list(F.target_modules), task_type='CAUSAL_LM')
    timer = Timer()
    with tempfile.TemporaryDirectory() as d:
        F.save_steps = 10 ** 6
        tr = cls(model=model, args=_sft_args(F, Path(d), dev, seed, False, max_steps=steps), train_dataset=ds,
                 processing_class=tok, peft_config=lora, callbacks=[timer], **kw)
        fed, targets, real, T2 = [], [], [], []                          # what the model actually ran, per step
        orig = tr.compute_loss
        def counting(model, inputs, *a, **k):
            ids = inputs['input_ids']; fed.append(int(ids.numel()))
            real.append(int(inputs['row_n'].sum()) if 'row_n' in inputs else int(inputs['attention_mask'].sum()))
            targets.append(int(len(inputs['targets'])) if 'targets' in inputs else int((inputs['labels'] != -100).sum()))
            T2.append(int(ids.shape[0]) * int(ids.shape[1]) ** 2)
            return orig(model, inputs, *a, **k)
        tr.compute_loss = counting
        b0 = cpu_busy(); res = tr.train(); b1 = cpu_busy()
    losses = [h['loss'] for h in tr.state.log_history if 'loss' in h]
    secs = timer.t1 - timer.t0
    return dict(kind=kind, seconds=secs, tokens=sum(real[1:]), tok_s=sum(real[1:]) / secs, final_loss=losses[-1],
                fed=sum(fed[1:]), targets=sum(targets[1:]), attn=sum(T2[1:]), others=others_share(b0, b1), dtype=dev['dtype'],
                model=model)



def flops(model, r:dict) -> float:
    """FLOPs our steps did: 4 x (non-embedding weights) per token fed (forward, and backward to the activations; LoRA's
    own are small), the LM head's 4 x hidden x vocab per predicted position, and attention's 12 x T^2 x hidden per layer
    per row (forward and backward)."""
    cfg = model.config.get_text_config()
    body = sum(p.numel() for n, p in model.named_parameters() if 'embed' not in n and 'lm_head' not in n)
    return 4 * body * r['fed'] + 4 * cfg.hidden_size * cfg.vocab_size * r['targets'] + 12 * cfg.num_hidden_layers * cfg.hidden_size * r['attn']


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='8 steps, 1 repeat (under two minutes)')
    ap.add_argument('--steps', type=int, default=None, help='optimizer steps (default 30; 8 with --quick)')
    ap.add_argument('--batch', type=int, default=8, help='samples per step (the cpu profile: 8)')
    ap.add_argument('--repeats', type=int, default=None, help='timed repeats of each, alternating, median reported (default 3; 1 with --quick)')
    ap.add_argument('--run', default=None, help='a run folder whose augment output gives the samples')
    ap.add_argument('--culture', default='arabic')
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args(argv)
    import torch
    from culturellm.config import get_config
    if a.threads: torch.set_num_threads(a.threads)
    steps = a.steps or (8 if a.quick else 30); reps = a.repeats or (1 if a.quick else 3)
    F = get_config('cpu').finetune; F.batch_size = a.batch
    recs, src = training_samples(a.culture, a.run, steps * a.batch, a.seed)
    print(f'samples: {len(recs)} from {src}; {steps} steps of {a.batch}; LoRA r={F.r} on {len(F.target_modules)} module kinds; '
          f'threads {torch.get_num_threads()}')
    runs = {'ours': [], 'baseline': [], 'chat': []}
    for k in range(reps):
        for kind in (('ours', 'baseline', 'chat') if k % 2 == 0 else ('chat', 'baseline', 'ours')):
            r = train_once(kind, recs, F, steps, a.seed); runs[kind].append(r)
            print(f"  {kind:8s} run {k + 1}: {r['tok_s']:8.1f} tok/s  {r['seconds']:6.1f}s  fed {r['fed']:6d} tokens  "
                  f"loss {r['final_loss']:.3f}  other processes {r['others']:.0%} of the CPU")
    med = {k: statistics.median(x['tok_s'] for x in v) for k, v in runs.items()}
    o, b = runs['ours'][-1], runs['baseline'][-1]
    peak = matmul_peak(('bf16' if o['dtype'] == 'bfloat16' else 'fp32',))
    pk = list(peak.values())[0] * 1e9
    ours_rate = statistics.median(flops(x['model'], x) / x['seconds'] for x in runs['ours'])
    c = runs['chat'][-1]
    print(f"tokens run through the model per step: ours {o['fed'] / (steps - 1):.0f}, baseline {b['fed'] / (steps - 1):.0f} "
          f"({1 - o['fed'] / b['fed']:.0%} fewer); positions scored by the LM head: ours {o['targets'] / (steps - 1):.0f}, baseline {b['targets'] / (steps - 1):.0f}")
    print(f"final loss: ours {o['final_loss']:.4f} and baseline {b['final_loss']:.4f} (answer tokens), chat {c['final_loss']:.4f} (all tokens)")
    print(f"our FLOP rate {ours_rate / 1e9:.1f} GFLOP/s; measured {list(peak)[0]} matmul peak {pk / 1e9:.1f} GFLOP/s")
    write_results('finetune', dict(steps=steps, batch=a.batch, repeats=reps, samples=src, setups=SETUPS, peak_gflops=pk / 1e9,
                                   our_gflops=ours_rate / 1e9, medians=med,
                                   runs={k: [{f: x[f] for f in ('tok_s', 'seconds', 'tokens', 'fed', 'targets', 'final_loss', 'others')} for x in v]
                                         for k, v in runs.items()}))
    print(f"finetune (older comparison): ours={med['ours']:.1f} baseline={med['chat']:.1f} ratio={med['ours'] / med['chat']:.2f} "
          f"baseline_setup=trl_default_chat_all_tokens")
    print(f"finetune: ours={med['ours']:.1f} baseline={med['baseline']:.1f} ratio={med['ours'] / med['baseline']:.2f} "
          f"peak_fraction={ours_rate / pk:.3f} baseline_setup=trl_completion_only")


if __name__ == '__main__': main()
