"""Semantic data augmentation: whole-word case-preserving substitution, the similarity filter's threshold with the
real embedder, duplicates removed, the released sets read, and a deterministic, fully cached rerun on the real
small model."""
import json
from dataclasses import replace

import numpy as np
import pytest

from culturellm.augment import (Template, augment_questions, fill, heuristic_template, load_original, norm_text,
                                paraphrase_step, parse_slots, set_quality, write_augmented)
from culturellm.config import get_config
from culturellm.llm import CallCache, Embedder, LocalLM
from culturellm.seeds import load_questions

QS = load_questions()


@pytest.mark.parametrize('text, slot, new, want', [
    ("Men make better political leaders than women do.", 'Men', 'guys', "Guys make better political leaders than women do."),
    ("Women and men, equally.", 'men', 'guys', "Women and guys, equally."),                  # 'Women' keeps its 'men'
    ("Men and women, equally.", 'women', 'FEMALES', "Men and FEMALES, equally."),
    ("It is a JOB, not a hobby.", 'JOB', 'career', "It is a CAREER, not a hobby."),
    ("A job is a duty.", 'job', 'occupation', "An occupation is a duty."),                   # a/an follow the new word
    ("An income (paid work) matters.", 'income', 'salary', "A salary (paid work) matters."),
    ("Is it the state's duty?", "state's", "government's", "Is it the government's duty?"),
])
def test_fill_whole_word_case(text, slot, new, want):
    "Only the slot's own span changes: never a substring of another word; case and articles follow."
    a = next(m for m in range(len(text)) if text.startswith(slot, m) and (m == 0 or not text[m - 1].isalnum())
             and (m + len(slot) == len(text) or not text[m + len(slot)].isalnum()))
    assert fill(Template(text, [(a, a + len(slot))], 'model'), {0: new}) == want


def test_slots_from_model_reply_are_checked():
    "A bracketed reply counts only if it gives the sentence back; function words and acronyms are never slots."
    s = "Science and technology make our lives healthier, easier, and more comfortable."
    t = parse_slots("[Science] and [technology] make our [lives] [healthier], easier, and more [comfortable].", s)
    assert t.words == ['Science', 'technology', 'lives', 'healthier', 'comfortable'] and t.source == 'model'
    assert parse_slots("[Science] and [technology] make lives healthier.", s) is None
    assert parse_slots("Science [and] technology make [our] lives healthier, easier, and more comfortable.", s) is None
    assert heuristic_template("The UN does not help.").words == ['help']


@pytest.fixture(scope='module')
def smol(tmp_path_factory):
    "The real SmolLM2-135M-Instruct and embedder, sharing one on-disk cache for the module."
    cache = CallCache(tmp_path_factory.mktemp('calls'))
    return LocalLM(cache=cache), Embedder(cache=cache), cache


def test_filter_threshold_real_embedder(smol):
    "Kept rewrites are at or above the threshold, dissimilar ones below; moving the threshold across a kept one flips it."
    gen, emb, _ = smol
    cfg = get_config('smoke').augment
    recs = paraphrase_step(gen, emb, QS[:2], n=cfg.n, threshold=0.5, max_rounds=1, max_tokens=cfg.max_tokens, seed=0)
    assert recs, "the model produced candidates"
    assert all(r['sim_seed'] >= 0.5 - 1e-4 for r in recs if r['status'] == 'kept')
    assert all(r['sim_seed'] < 0.5 + 1e-4 for r in recs if r['status'] == 'dissimilar')
    kept = [r for r in recs if r['status'] == 'kept']
    if not kept: pytest.skip('no rewrite of these seeds passed 0.5: nothing to move the threshold across')
    r0 = kept[0]
    def status(th):
        rr = paraphrase_step(gen, emb, QS[:2], n=cfg.n, threshold=th, max_rounds=1, max_tokens=cfg.max_tokens, seed=0)
        return next(r['status'] for r in rr if r['text'] == r0['text'] and r['q_id'] == r0['q_id'])
    assert status(r0['sim_seed'] - 1e-3) == 'kept'
    assert status(r0['sim_seed'] + 1e-3) == 'dissimilar'


def test_augment_deterministic_cached_no_duplicates(smol, tmp_path):
    "Both steps on the real model: no duplicates, at most n and m kept per seed; a rerun from the cache calls no model and is identical."
    gen, emb, cache = smol
    cfg = get_config('smoke').augment
    a = augment_questions(cfg, QS[:2], gen, emb, seed=0)
    for step, k in ((1, cfg.n), (2, cfg.m)):
        recs = a[f'step{step}']
        for q in QS[:2]:
            kept = [r for r in recs if r['q_id'] == q.id and r['status'] == 'kept']
            assert len(kept) <= k
            keys = [norm_text(r['text']) for r in kept]
            assert len(set(keys)) == len(keys) and norm_text(q.text) not in keys
            if len(kept) > 1:
                v = emb.embed([r['text'] for r in kept]); S = v @ v.T
                assert (S[np.triu_indices(len(kept), 1)] < cfg.dup).all(), "no near duplicates among the kept"
        assert all(r['sim_parent'] >= cfg.threshold - 1e-4 for r in recs if r['status'] == 'kept')
    assert all(r['step'] == 2 and r['status'] == 'kept' for r in a['final'])
    fresh = LocalLM(cache=CallCache(cache.path)); e2 = Embedder(cache=CallCache(cache.path))
    b = augment_questions(cfg, QS[:2], fresh, e2, seed=0)
    assert fresh.calls == 0 and e2._embedder is None, "the rerun made no model call"
    assert a == b
    paths = write_augmented(tmp_path, a)
    assert [json.loads(l) for l in paths['final'].read_text().splitlines()] == a['final']


def test_original_release_read(data_root):
    "new_WVQ_500 has 10 per seed; new_WVQ_100 (no ids) is matched by ori_content; new_WVQ_1000 has its 5 'woguys'."
    o = load_original(data_root / 'culturellm' / 'new_WVQ_500.jsonl', QS)
    assert len(o) == 500 and {r['q_id'] for r in o} == {q.id for q in QS}
    o1000 = load_original(data_root / 'culturellm' / 'new_WVQ_1000.jsonl', QS)
    assert len(o1000) == 1000 and sum('woguys' in r['text'] for r in o1000) == 5
    o100 = load_original(data_root / 'culturellm' / 'new_WVQ_100.jsonl', QS)
    assert len(o100) == 100 and len({r['q_id'] for r in o100}) == 50


def test_original_bad_row_named(tmp_path):
    p = tmp_path / 'x.jsonl'
    p.write_text('{"q_id": "27", "q_content": "ok"}\n{"q_id": "999", "q_content": "who?"}\n')
    with pytest.raises(ValueError, match=r"x.jsonl line 2: its q_id or ori_content matches none"):
        load_original(p, QS)


def test_original_source_gives_the_ablation_its_a_set(data_root, tmp_path):
    """`augment.source=original` loads the release's step-1 rewrites as the +a set (before, +a was empty and `wvs_a` equalled
    `wvs`) and its variants as the +b set, with near-copies of a rewrite recorded as its children."""
    papermill = pytest.importorskip('papermill')
    from pathlib import Path
    from culturellm.config import config_to_dict
    from culturellm.finetune import load_augmented, split_augmented, variant_questions
    repo = Path(__file__).resolve().parents[1]
    cfg = get_config('smoke', {'data_root': str(data_root), 'augment': {'source': 'original', 'questions': 5, 'judge_sample': 0}})
    (tmp_path / 'config.json').write_text(json.dumps(config_to_dict(cfg)))
    run = tmp_path / 'run'
    papermill.execute_notebook(str(repo / 'nbs' / '01_augment.ipynb'), str(tmp_path / 'out.ipynb'), cwd=str(repo / 'nbs'),
                               parameters=dict(culture='all', profile='smoke', run_dir=str(run), config_file=str(tmp_path / 'config.json')),
                               progress_bar=False, kernel_name='python3')
    aug = load_augmented(run)
    assert aug['a'] and aug['b'] and {r['step'] for r in aug['a']} == {1} and {r['q_id'] for r in aug['a']} <= {q.id for q in QS[:5]}
    train = split_augmented(aug, 0.2, 0)[0]
    sizes = [len(variant_questions(QS, train, v)) for v in ('wvs', 'wvs_a', 'wvs_ab')]
    assert sizes[0] < sizes[1] < sizes[2], sizes
