"""Fine-tuning: the packed batches train on the answer tokens only and give TRL's own loss, a tiny model learns a
few samples, a killed run resumes to the same adapter, finished adapters are reused, and the training sets nest."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from culturellm.config import get_config, read_jsonl
from culturellm.finetune import agreement, answer_suffix, culture_samples, nested_subset, one_samples, split_augmented, variant_questions, write_sets
from culturellm.training import PackedCollator, _trainer_class, load_base, train_device, train_lora
from culturellm.llm import LocalLM
from culturellm.seeds import CULTURES, culture_answers, load_questions, validate_chat_record, wvs_counts

QS = load_questions()


def samples(culture='korean', extra=()):
    C = CULTURES[culture]
    return culture_samples([(q, q.text, 'seed') for q in QS] + list(extra), C, culture_answers(C, wvs_counts(C)))[0]


def smoke(**kw):
    F = get_config('smoke').finetune
    for k, v in kw.items(): setattr(F, k, v)
    return F


def test_packed_loss_is_trls_completion_only_loss():
    "On the same batch, the packed batch's loss equals TRL's completion-only loss and its targets are exactly the answer tokens."
    from datasets import Dataset
    from peft import LoraConfig
    F = smoke(dropout=0.0, precision='fp32')
    dev = train_device('fp32')
    model, tok, _ = load_base('tiny-random', dev)
    recs = samples()[:6]
    ds = Dataset.from_list([{'prompt': r['messages'][:2], 'completion': r['messages'][2:]} for r in recs])
    from culturellm.training import _sft_args
    tr = _trainer_class()(model=model, args=_sft_args(F, Path('/tmp/unused-ck'), dev, 0, False), train_dataset=ds,
                          processing_class=tok, peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type='CAUSAL_LM'))
    ex = [tr.train_dataset[i] for i in range(len(recs))]
    trl_batch = tr.data_collator(ex)
    ours = PackedCollator(tok.pad_token_id, 128)(ex)
    answer = [t for e in ex for t in e['labels'] if t != -100]
    assert sorted(ours['targets'].tolist()) == sorted(answer)
    assert all(len([t for t in e['labels'] if t != -100]) == 3 for e in ex)          # '2<|im_end|>\n'
    assert ours['input_ids'].numel() < trl_batch['input_ids'].numel()
    tr.model.eval()
    with torch.no_grad():
        a = tr.compute_loss(tr.model, {k: v for k, v in trl_batch.items()})
        b = tr.compute_loss(tr.model, dict(ours))
    assert abs(float(a) - float(b)) < 1e-4, (float(a), float(b))


def test_small_model_learns_its_samples(tmp_path):
    """SmolLM2-135M tuned on 4 samples: the loss falls tenfold and it then answers all 4 as trained. (The tiny random
    model cannot: its tied 64-wide embeddings bound every logit near zero, so no adapter can make it confident.)"""
    recs = samples()[:4]
    F = smoke(model='smollm2-135m-instruct', r=8, alpha=16, lr=2e-3, max_steps=20, dropout=0.0, scheduler='constant',
              warmup_ratio=0.0, save_steps=100)
    info = train_lora(F, recs, tmp_path / 'ad', seed=0)
    L = [x['loss'] for x in info['losses']]
    assert L[-1] < 0.1 * L[0], L
    lm = LocalLM(dtype=info['device']['dtype'].replace('bfloat16', 'bf16').replace('float32', 'fp32'))
    C = CULTURES['korean']; ans = culture_answers(C, wvs_counts(C))
    rows = [(q, q.text, 'seed') for q in QS if q.id in {r['q_id'] for r in recs}]
    before = agreement(lm, rows, C, ans, 'base', answer_suffix(lm.tok))
    lm.load_adapter(tmp_path / 'ad', 'k')
    after = agreement(lm, rows, C, ans, 'tuned', answer_suffix(lm.tok))
    assert after['agree'].tolist() == [1, 1, 1, 1], (before, after)


class Crash(Exception): pass


def test_resume_gives_the_same_adapter(tmp_path):
    "Killed after step 4 with a checkpoint at step 3, the rerun resumes and ends with the uninterrupted run's adapter."
    from transformers import TrainerCallback
    from safetensors.torch import load_file
    recs = samples()[:24]
    F = smoke(max_steps=6, save_steps=3, dropout=0.1, precision='fp32')
    whole = train_lora(F, recs, tmp_path / 'whole', seed=3)
    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 4: raise Crash()
    with pytest.raises(Crash): train_lora(F, recs, tmp_path / 'killed', seed=3, callbacks=[Kill()])
    assert not (tmp_path / 'killed').exists(), "nothing half-written"
    again = train_lora(F, recs, tmp_path / 'killed', seed=3)
    assert again['resumed'] and not whole['resumed'] and again['steps'] == 6
    a, b = (load_file(tmp_path / d / 'adapter_model.safetensors') for d in ('whole', 'killed'))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [x['loss'] for x in again['losses']][-2:] == pytest.approx([x['loss'] for x in whole['losses']][-2:], abs=1e-5)
    assert train_lora(F, recs, tmp_path / 'whole', seed=3)['reused'], "a finished adapter is reused"


def test_training_sets(tmp_path):
    "Variants nest, One is the union with each culture's system prompt, and both files are valid."
    aug = [dict(q_id=q.id, text=f'{q.text[:-1]}, in your view{q.text[-1]}', step=1) for q in QS[:10]]
    aug2 = [dict(q_id=q.id, text=f'Tell me: {q.text}', step=2) for q in QS[:30]]
    tr, ho = split_augmented({'a': aug, 'b': aug2}, 0.2); tr_a, tr_b, held = tr['a'], tr['b'], ho['a'] + ho['b']
    sets = {v: variant_questions(QS, {'a': tr_a, 'b': tr_b}, v) for v in ('wvs', 'wvs_a', 'wvs_ab')}
    assert len(sets['wvs']) == 50 and len(sets['wvs_a']) == 50 + len(tr_a) and len(sets['wvs_ab']) == 50 + len(tr_a) + len(tr_b)
    assert {t for _, t, _ in sets['wvs_a']} <= {t for _, t, _ in sets['wvs_ab']}
    assert not {r['text'] for r in held} & {t for _, t, _ in sets['wvs_ab']}, "held-out questions never train"
    per = {c: culture_samples(sets['wvs_ab'], CULTURES[c], culture_answers(CULTURES[c], wvs_counts(CULTURES[c])))[0]
           for c in ('arabic', 'chinese')}
    one = one_samples(per)
    assert len(one) == sum(map(len, per.values()))
    assert {r['messages'][0]['content'] for r in one} == {CULTURES['arabic'].system_prompt, CULTURES['chinese'].system_prompt}
    paths = write_sets(tmp_path, 'one', 'wvs_ab', one)
    for i, r in enumerate(read_jsonl(paths['chat'])): validate_chat_record(r, f'record {i}')
    trl = read_jsonl(paths['trl'])
    assert len(trl) == len(one) and trl[0]['completion'][0]['role'] == 'assistant' and len(trl[0]['prompt']) == 2
    assert len(nested_subset(aug2, 7)) == 7 and nested_subset(aug2, 0) == aug2


def test_openai_backend_stage(tmp_path, monkeypatch, data_root):
    "`finetune.backend=openai`: the stage uploads each culture's chat file, runs the job to the end and records the model id in the manifest."
    from culturellm.openai_ft import FineTuneServer
    from culturellm.run import run_study
    monkeypatch.setenv('OPENAI_API_KEY', 'sk-test-stage-key')
    with FineTuneServer(api_key='sk-test-stage-key') as srv:
        cfg = get_config('smoke', {'cultures': ['korean'], 'data_root': str(data_root), 'augment': {'source': 'original'},
                                   'finetune': {'backend': 'openai', 'model': 'gpt-3.5-turbo', 'base_url': srv.url,
                                                'poll_seconds': 0.01, 'one': False}})
        m = run_study(cfg, tmp_path / 'run', stages=['seeds', 'augment', 'finetune'], progress=False)
        st = m['stages']['finetune/korean']
        assert st['status'] == 'ok', st
        assert st['openai_ft']['status'] == 'succeeded' and st['openai_ft']['fine_tuned_model'].startswith('ft:gpt-3.5-turbo')
        assert srv.calls['files.create'] == 1 and srv.calls['jobs.create'] == 1
        assert 'finetune/one' not in m['stages'], "finetune.one=false trains no One"
        assert st['record']['samples'] > 50, "the seeds and the released augmented questions"
    text = ''.join(p.read_text() for p in (tmp_path / 'run').rglob('*') if p.is_file() and p.suffix in ('.json', '.ipynb', '.log'))
    assert 'sk-test-stage-key' not in text, "the key never reaches the run folder"


def _fixture_augmented() -> dict:
    "The kept records of a real cpu augment run, as `load_augmented` returns them."
    d = Path(__file__).parent / 'data' / 'augment_cpu'
    return {'a': read_jsonl(d / 'augment_step1.jsonl'), 'b': read_jsonl(d / 'augmented.jsonl')}


def test_heldout_split_by_lineage_on_real_augment_output():
    """On a real augment output (the cpu profile's SmolLM2-135M run, kept records: tests/data/augment_cpu), no held-out
    wording shares a lineage (a step-1 rewrite with its step-2 variants) with any training wording of any variant or size;
    the split by text alone it replaces held out 19 wordings of which 5 had their lineage in training."""
    from culturellm.augment import norm_text
    from culturellm.finetune import _unit_hash, lineages
    aug = _fixture_augmented()
    lin = lineages(aug)
    key = lambda r: (r['q_id'], lin[(r['q_id'], norm_text(r['text']))])
    train, held = split_augmented(aug, 0.2, 0)
    held_recs, train_recs = held['a'] + held['b'], train['a'] + train['b']
    assert held_recs and not {key(r) for r in held_recs} & {key(r) for r in train_recs}
    assert not {norm_text(r['parent']) for r in train['b']} & {norm_text(r['text']) for r in held_recs}   # no training child
    assert not {norm_text(r['parent']) for r in held['b']} & {norm_text(r['text']) for r in train_recs}   # no training parent
    for v in ('wvs', 'wvs_a', 'wvs_ab'):
        for k in (0, 5, 20):
            texts = {(q.id, norm_text(t)) for q, t, src in variant_questions(QS, train, v, k) if src != 'seed'}
            assert not {(q, lin[(q, t)]) for q, t in texts} & {key(r) for r in held_recs}
    old = [r for r in aug['a'] + aug['b'] if _unit_hash('holdout', 0, r['q_id'], r['text']) < 0.2]
    old_train = {key(r) for r in aug['a'] + aug['b'] if _unit_hash('holdout', 0, r['q_id'], r['text']) >= 0.2}
    assert (len(old), sum(key(r) in old_train for r in old)) == (19, 5)


def test_a_reused_base_gives_the_same_adapter(tmp_path):
    """`train_lora` gives its base model back with the LoRA layers removed and the next run trains on it: that run's
    adapter equals one trained on a freshly loaded base, and the base given back is the base as loaded."""
    from safetensors.torch import load_file
    import culturellm.training as ft
    recs = samples()[:16]
    F = smoke(max_steps=3, dropout=0.1, precision='fp32')
    ft._BASE.clear()
    train_lora(F, recs, tmp_path / 'first', seed=1)
    assert len(ft._BASE) == 1
    (base, _, _), = ft._BASE.values()
    assert not any('lora' in n for n, _ in base.named_parameters()) and not base.training
    fresh, _, _ = load_base(F.model, train_device('fp32'))
    assert all(torch.equal(p, q) for p, q in zip(base.state_dict().values(), fresh.state_dict().values()))
    reused = train_lora(F, recs[:12], tmp_path / 'reused', seed=2)
    ft._BASE.clear()
    alone = train_lora(F, recs[:12], tmp_path / 'alone', seed=2)
    a, b = (load_file(tmp_path / d / 'adapter_model.safetensors') for d in ('reused', 'alone'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [x['loss'] for x in reused['losses']] == [x['loss'] for x in alone['losses']]


def test_a_step_in_parts_is_the_same_step(tmp_path):
    """With `micro_tokens` a step's packed rows run in parts (each part's loss weighted by its share of the answer
    tokens, gradients summed): the adapter and the losses are those of the whole step, up to float rounding."""
    from safetensors.torch import load_file
    recs = samples()[:24]
    runs = {}
    for micro in (0, 64):
        F = smoke(max_steps=3, batch_size=8, dropout=0.0, precision='fp32', row_tokens=64, micro_tokens=micro)
        runs[micro] = train_lora(F, recs, tmp_path / f'm{micro}', seed=4)
    a, b = (load_file(tmp_path / f'm{m}' / 'adapter_model.safetensors') for m in (0, 64))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)   # Adam's steps: rounding-level differences (weights ~0.1)
    assert [x['loss'] for x in runs[64]['losses']] == pytest.approx([x['loss'] for x in runs[0]['losses']], abs=1e-5)
    assert runs[64]['tokens'] == runs[0]['tokens']


def test_two_processes_train_the_one_process_adapter(tmp_path):
    """`finetune.processes=2` launches two training processes (torchrun, gloo on CPUs) that split each step's batch:
    same key, same losses (to 1e-4 in fp32, no dropout) and weights as one process; `world_size` recorded; the
    adapter loads and scores; and a run with one process reuses it."""
    from safetensors.torch import load_file
    from culturellm.config import ConfigError
    recs = samples()[:32]
    kw = dict(max_steps=4, batch_size=8, dropout=0.0, precision='fp32', save_steps=100)
    one = train_lora(smoke(processes=1, **kw), recs, tmp_path / 'p1', seed=0)
    two = train_lora(smoke(processes=2, **kw), recs, tmp_path / 'p2', seed=0)
    assert (one['world_size'], two['world_size'], one['key']) == (1, 2, two['key'])
    assert [x['loss'] for x in two['losses']] == pytest.approx([x['loss'] for x in one['losses']], abs=1e-4)
    assert two['tokens'] == one['tokens'] and two['steps'] == 4
    a, b = (load_file(tmp_path / d / 'adapter_model.safetensors') for d in ('p1', 'p2'))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert not list(tmp_path.glob('.p2.launch*')), "the launch spec is removed"
    lm = LocalLM(model='tiny-random', dtype='fp32')
    lm.load_adapter(tmp_path / 'p2', 'p2')
    rows = [(q, q.text, 'seed') for q in QS[:3]]
    C = CULTURES['korean']
    got = agreement(lm, rows, C, culture_answers(C, wvs_counts(C)), 'p2', answer_suffix(lm.tok))
    assert len(got) == 3 and got['p_gold'].between(0, 1).all()
    assert train_lora(smoke(processes=1, **kw), recs, tmp_path / 'p2', seed=0)['reused']
    with pytest.raises(ConfigError, match="finetune.processes.*expected at most"):
        train_lora(smoke(processes=64, **kw), recs, tmp_path / 'p64', seed=0)
    with pytest.raises(ConfigError, match="cannot split"):
        get_config('smoke', {'finetune': {'processes': 3, 'batch_size': 8}})
