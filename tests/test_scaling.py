"""Data-size study: the perplexity is the reference model's own token-level perplexity (checked against the model's
loss) and ranks fluent text below scrambled text, the diversity gain orders copies, paraphrases and unrelated text,
the mean macro-F1 agrees with the evaluate stage's per-task scores, and sizes and config are validated."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from culturellm.config import ConfigError, get_config
from culturellm.finetune import nested_subset
from culturellm.llm import Embedder, LocalLM
from culturellm.scaling import (diversity_gain, doc_start, mean_task_f1, nearest_seed_distance, parse_sizes, set_perplexity,
                                text_logprobs)

FLUENT = ['How important is family in your life?', 'Do you think that men make better political leaders than women do?',
          'How much do you trust people you meet for the first time?']


@pytest.fixture(scope='module')
def smol():
    return LocalLM('smollm2-135m-instruct', dtype='fp32', cache=None)   # fp32: the check below is exact up to float error


def test_perplexity_is_the_models_own(smol):
    "exp(-Σ log p / Σ tokens) from `text_logprobs` equals exp of the model's own mean token loss on [document start] + text."
    lp = text_logprobs(smol, FLUENT)
    start = smol.tok(doc_start(smol.tok), add_special_tokens=False).input_ids
    for text, got, n in zip(FLUENT, lp.logprob, lp.n_tokens):
        ids = torch.tensor([start + smol.tok(text, add_special_tokens=False).input_ids])
        labels = ids.clone(); labels[0, :len(start)] = -100
        with torch.no_grad(): loss = smol.model(input_ids=ids, labels=labels).loss.item()
        assert n == ids.shape[1] - len(start)
        assert abs(-got / n - loss) < 1e-3, (text, -got / n, loss)
    ppl = set_perplexity(lp.logprob, lp.n_tokens, 200)[0]
    assert math.isclose(ppl, math.exp(-lp.logprob.sum() / lp.n_tokens.sum()))


def test_perplexity_direction(smol):
    "Lower is more predictable: the real questions score below the same words in a scrambled order, on every question."
    rng = np.random.default_rng(0)
    scrambled = [' '.join(rng.permutation(t.rstrip('?').split())) + '?' for t in FLUENT]
    a, b = text_logprobs(smol, FLUENT), text_logprobs(smol, scrambled)
    pa, pb = np.exp(-a.logprob / a.n_tokens), np.exp(-b.logprob / b.n_tokens)
    assert (pa < pb).all(), (pa.tolist(), pb.tolist())
    assert set_perplexity(a.logprob, a.n_tokens, 200)[0] * 2 < set_perplexity(b.logprob, b.n_tokens, 200)[0]


def test_diversity_gain_orders_copies_paraphrases_and_unrelated_text():
    "With all-MiniLM-L6-v2: a copy of a seed is 0, a paraphrase is close, an unrelated sentence is far."
    emb = Embedder()
    seeds = emb.embed(FLUENT)
    new = emb.embed([FLUENT[0], 'In your life, how much does family matter?', 'The recipe needs two cups of flour and an egg.'])
    d = nearest_seed_distance(new, seeds)
    assert d[0] < 1e-5 and d[0] < d[1] < d[2], d.tolist()
    v, lo, hi = diversity_gain(d, 500)
    assert math.isclose(v, d.mean(), rel_tol=1e-9) and lo <= v <= hi


def test_mean_task_f1_matches_the_evaluate_stage():
    "The mean macro-F1 is the mean of `evaluate.task_scores`' per-task macro-F1, and its interval holds it."
    from culturellm.evaluate import Task, task_scores
    rng = np.random.default_rng(1)
    rows, labels, per = [], {}, []
    for k, (labs, fam) in enumerate([(('OFF', 'NOT'), 'offensive'), (('0', '1', '2'), 'hate_offens_3class')]):
        t = Task(culture='x', task=f't{k}', dataset='d', path='/dev/null', text_field='text', label_field='label', labels=labs, family=fam)
        gold = rng.choice(labs, 60); pred = np.where(rng.random(60) < .6, gold, rng.choice(labs, 60))
        p = pd.DataFrame(dict(task=t.task, gold=gold, pred=pred, parsed=True))
        rows.append(p); labels[t.task] = labs
        per.append(task_scores(p, t, 'logprobs', 200)[0]['value'])
    v, lo, hi, n = mean_task_f1(pd.concat(rows), labels, 500)
    assert math.isclose(v, np.mean(per)) and lo < v < hi and n == 120


def test_sizes_and_config():
    "Sizes parse, nest and are validated; the profiles' settings are there and bad values are one-line errors naming the key."
    assert parse_sizes(['0', '10', 'all'], 75) == ([0, 10, 75], [])
    assert parse_sizes(['50', '1000'], 600) == ([50], [1000])
    with pytest.raises(ValueError, match="scaling.sizes"): parse_sizes(['-3'], 10)
    pool = [dict(q_id=q, text=f'{q}-{i}') for q in range(5) for i in range(8)]
    a, b = nested_subset(pool, 10), nested_subset(pool, 25)
    assert all(r in b for r in a) and pd.Series([r['q_id'] for r in a]).value_counts().tolist() == [2] * 5
    assert get_config('cpu').scaling.sizes == ['0', '10', 'all']
    assert get_config('paper').scaling.sizes[:6] == ['0', '50', '100', '150', '500', '1000']
    assert get_config('smoke').scaling.n_boot < get_config('paper').scaling.n_boot
    with pytest.raises(ConfigError, match="'scaling.repeats'"): get_config('smoke', {'scaling': {'repeats': 0}})
    with pytest.raises(ConfigError, match="scaling.sizess"): get_config('smoke', {'scaling': {'sizess': ['1']}})
