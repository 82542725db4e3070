"""The local backend: shared-prompt scoring equals the naive computation, the cache makes a rerun call no
model, the cache is safe under several processes, sampling is seeded, and adapters key the cache."""
import json, multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from culturellm.llm import CallCache, LocalLM, naive_option_logprobs, packed_tokens, tiny_model
from culturellm.seeds import CULTURES, load_questions, question_prompt, system_prompt


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp('tiny') / 'llama')


def wvs_items(n=12):
    "Real prompts of varying length (WVS questions, chat and plain) with options of 1 to many tokens."
    qs = load_questions()[:n]
    c = CULTURES['korean']
    out = []
    for k, q in enumerate(qs):
        opts = [str(x) for x in q.scale.codes] if k % 2 else [f"{x}. {q.scale.label(x)}" for x in q.scale.codes]
        prompt = ([{'role': 'system', 'content': system_prompt(c)}, {'role': 'user', 'content': question_prompt(q)}]
                  if k % 3 else question_prompt(q, 'compat') + ' Answer:')
        out.append((prompt, opts))
    return out


def test_scoring_equals_naive(tiny_dir):
    "Every option's log-prob equals one full forward pass per option, whatever the packing and prefix sharing."
    lm = LocalLM(str(tiny_dir), dtype='fp32')
    items = wvs_items()
    for batch, row, prefix in ((4096, 512, 8), (300, 64, 8), (64, 16, 0), (2048, 2048, 2)):
        lm.batch_tokens, lm.row_tokens, lm.min_prefix = batch, row, prefix
        for (p, opts), s in zip(items, lm.score_options(items)):
            np.testing.assert_allclose(s.logprob, naive_option_logprobs(lm, p, opts), atol=2e-4)
            assert s.n_tokens == [len(lm._encode_pair(lm._format(p), o)[1]) for o in opts]


def encoded(lm, items):
    return [(lm._encode_pair(lm._format(p), os_[0])[0], [lm._encode_pair(lm._format(p), o)[1] for o in os_]) for p, os_ in items]


def test_prefix_groups_share_what_pays(tiny_dir):
    "Chat prompts with one system prompt form one group whose prefix runs once; unrelated short prompts are left alone."
    lm = LocalLM(str(tiny_dir), dtype='fp32')
    items = wvs_items(12)
    enc = encoded(lm, items)
    groups = lm._prefix_groups([c for c, _ in enc])
    assert sorted(i for _, idx in groups for i in idx) == list(range(len(items))), "every item in exactly one group"
    for K, idx in groups:
        if K: assert len(idx) > 1 and all(enc[i][0][:K] == enc[idx[0]][0][:K] and len(enc[i][0]) > K for i in idx)
    chat = [i for i, (p, _) in enumerate(items) if isinstance(p, list)]
    assert any(K >= 8 and set(chat) <= set(idx) for K, idx in groups), "the chat prompts share their system prompt"
    lm.min_prefix = 0
    assert lm._prefix_groups([c for c, _ in enc]) == [(0, sorted(range(len(items)), key=lambda i: enc[i][0]))]


def test_packing_fills_rows_and_respects_budgets(tiny_dir):
    "Rows hold at most row_tokens (one longer item gets its own row); a batch pads to at most batch_tokens."
    lm = LocalLM(str(tiny_dir), dtype='fp32', row_tokens=96, batch_tokens=400)
    items = wvs_items(12) + [("word " * 150, [" a", " b"])]
    enc = encoded(lm, items)
    size = lambda row: packed_tokens(enc, row)
    batches = lm._pack(enc)
    seen = sorted(i for b in batches for row in b for _, idx in row for i in idx)
    assert seen == list(range(len(items))), "every item scored exactly once"
    for b in batches:
        for row in b:
            assert size(row) <= 96 or (len(row) == 1 and len(row[0][1]) == 1), "only a lone too-long item overfills a row"
        assert len(b) * max(map(size, b)) <= 400 or len(b) == 1
    long_rows = [[len(idx) for _, idx in row] for b in batches for row in b if any(len(items) - 1 in idx for _, idx in row)]
    assert long_rows == [[1]], "the 300-token item sits alone in its row"


def test_option_merging_with_prompt_still_scores(tiny_dir):
    "An option whose first characters merge with the prompt's last token ('Q' + 'A' -> 'QA') is scored on its own tokens."
    lm = LocalLM(str(tiny_dir), dtype='fp32')
    (s,) = lm.score_options([("Q", ["A", "B"])])
    assert all(n >= 1 for n in s.n_tokens)
    np.testing.assert_allclose(s.logprob, naive_option_logprobs(lm, "Q", ["A", "B"]), atol=2e-4)


def test_cache_second_run_calls_no_model(tiny_dir, tmp_path):
    "A second identical run — a new process would look the same — makes zero model calls and returns the same."
    items = wvs_items(6); prompts = [p for p, _ in items]
    a = LocalLM(str(tiny_dir), dtype='fp32', cache=CallCache(tmp_path))
    r1 = (a.score_options(items), a.generate(prompts, max_tokens=5), a.embed(['one', 'two']))
    assert a.calls > 0 and a.cache.stats()['misses'] == len(items) + len(prompts) + 2
    b = LocalLM(str(tiny_dir), dtype='fp32', cache=CallCache(tmp_path))
    r2 = (b.score_options(items), b.generate(prompts, max_tokens=5), b.embed(['one', 'two']))
    assert b.calls == 0 and b._embedder is None, "no model call, and the embedder was never even loaded"
    assert b.cache.stats()['misses'] == 0 and b.cache.stats()['hits'] == len(items) + len(prompts) + 2
    assert [s.logprob for s in r1[0]] == [s.logprob for s in r2[0]] and r1[1] == r2[1]
    np.testing.assert_array_equal(r1[2], r2[2])


def test_cache_key_depends_on_inputs_and_params(tiny_dir, tmp_path):
    "A different option set, decoding parameter or precision is a different call."
    lm = LocalLM(str(tiny_dir), dtype='fp32', cache=CallCache(tmp_path))
    lm.score_options([("Hello", [" a", " b"])]); lm.score_options([("Hello", [" a", " c"])])
    lm.generate(["Hi"], max_tokens=3); lm.generate(["Hi"], max_tokens=4)
    assert lm.cache.stats()['hits'] == 0 and lm.cache.stats()['misses'] == 4


def _writer(args):
    path, worker = args
    c = CallCache(path)
    for i in range(150):
        k = c.key({}, 'm', {}, i % 50)          # the workers overlap on the same 50 keys
        c.put(k, {'i': i % 50, 'payload': 'x' * 2000})
        v = c.get(k)
        assert v is None or v['i'] == i % 50
    return True


def test_cache_concurrent_writers(tmp_path):
    "Four processes writing the same keys at once leave only complete, correct entries."
    with mp.get_context('spawn').Pool(4) as pool:
        assert all(pool.map(_writer, [(str(tmp_path), w) for w in range(4)]))
    files = list(tmp_path.rglob('*.json'))
    assert len(files) == 50 and not list(tmp_path.rglob('*.tmp'))
    for f in files: assert len(json.loads(f.read_text())['value']['payload']) == 2000


def test_sampling_is_seeded(tiny_dir):
    "Sampling with the same seed repeats itself; n samples per prompt; stop strings cut."
    lm = LocalLM(str(tiny_dir), dtype='fp32')
    a = lm.generate(["Tell me", "Another prompt"], n=3, temperature=1.0, max_tokens=8, seed=1)
    b = lm.generate(["Tell me", "Another prompt"], n=3, temperature=1.0, max_tokens=8, seed=1)
    c = lm.generate(["Tell me", "Another prompt"], n=3, temperature=1.0, max_tokens=8, seed=2)
    assert a == b and a != c and [len(x) for x in a] == [3, 3]
    g = lm.generate(["Tell me"], max_tokens=12)[0][0]
    if len(g) > 3:
        assert lm.generate(["Tell me"], max_tokens=12, stop=[g[2:4]])[0][0] == g[:g.find(g[2:4])]
    with pytest.raises(ValueError, match='need temperature > 0'):
        lm.generate(["x"], n=2)


def test_bad_items_are_one_line(tiny_dir):
    lm = LocalLM(str(tiny_dir), dtype='fp32')
    for items, msg in [([("x", [])], "item 0: expected"), ([("  ", ["a"])], "item 0: the prompt is empty"),
                       ([("x", ["a", ""])], "item 0: options must be non-empty strings"),
                       ([(5, ["a"])], "expected a string or a list")]:
        with pytest.raises(ValueError, match=msg) as e:
            lm.score_options(items)
        assert '\n' not in str(e.value)


def test_batched_sampling_is_per_row(tiny_dir):
    """A prompt's samples do not depend on its batch or its place in it; the n samples of a prompt differ; a
    batch that pads (prompts of other lengths) gives the same draws up to float rounding, checked on the first tokens."""
    lm = LocalLM(str(tiny_dir), dtype='fp32')
    ps = ["Tell me", "Tell us", "Ask me", "Give me"]                   # the same token length: no padding in a batch
    together = lm.generate(ps, n=2, temperature=1.0, max_tokens=6, seed=5, batch_size=8)
    alone = [lm.generate([p], n=2, temperature=1.0, max_tokens=6, seed=5, batch_size=1)[0] for p in ps]
    reversed_ = lm.generate(ps[::-1], n=2, temperature=1.0, max_tokens=6, seed=5, batch_size=3)[::-1]
    assert together == alone == reversed_
    assert any(a != b for a, b in together), "the samples of one prompt come from different generators"
    mixed = lm.generate(["Tell me", "A much longer prompt than the others, padded on the left"], temperature=1.0,
                        max_tokens=3, seed=5, batch_size=2)
    assert mixed[0] == lm.generate(["Tell me"], temperature=1.0, max_tokens=3, seed=5, batch_size=1)[0]
