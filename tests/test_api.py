"""The OpenAI-compatible backend against real HTTP servers: `transformers serve` with the converted SmolLM2-135M-Instruct
(generation, the cache, the log-prob probe and constrained option scoring), a server that echoes log-probs computed
by `LocalLM` (log-prob scoring equals local scoring), and a scripted server that injects faults (retries, backoff,
Retry-After, permanent errors in one line, no key anywhere)."""
import json, os, socket, subprocess, sys, threading, time, traceback
from pathlib import Path

import numpy as np
import pytest

from culturellm.api import ChoiceScores, OpenAILM, OpenAILMError, ScriptedServer, parse_choice
from culturellm.llm import CallCache, LocalLM, resolve_model, tiny_model
from culturellm.seeds import CULTURES, load_questions, question_prompt, system_prompt

KEY = 'sk-test-SECRET'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def wvs_items(n=6):
    "Real WVS prompts, plain and chat, with their answer options (codes or labels)."
    c, out = CULTURES['korean'], []
    for k, q in enumerate(load_questions()[:n]):
        opts = [str(x) for x in q.scale.codes] if k % 2 else [q.scale.label(x) for x in q.scale.codes]
        prompt = ([{'role': 'system', 'content': system_prompt(c)}, {'role': 'user', 'content': question_prompt(q)}]
                  if k % 3 else question_prompt(q))
        out.append((prompt, opts))
    return out


# --- a real server: transformers serve --------------------------------------------------------------------------

@pytest.fixture(scope='module')
def serve(tmp_path_factory):
    "`transformers serve` of the converted SmolLM2-135M-Instruct folder, offline, on a free port; stopped at teardown."
    path, _ = resolve_model()
    port, log = free_port(), tmp_path_factory.mktemp('serve') / 'serve.log'
    exe = Path(sys.executable).parent / 'transformers'
    cmd = [str(exe), 'serve', path, '--host', '127.0.0.1', '--port', str(port), '--device', 'cpu']
    # one torch thread: on a small shared machine, two processes spinning two OpenMP threads each slow down 10-30×
    env = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', OMP_NUM_THREADS='1')
    with open(log, 'wb') as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        import urllib.request
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None: pytest.fail(f"transformers serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=2) as r:
                    if r.status == 200: break
            except OSError: pass
            if time.time() > deadline: pytest.fail(f"transformers serve not ready after 120 s: {log.read_text()[-2000:]}")
            time.sleep(0.25)
        yield {'url': f'http://127.0.0.1:{port}/v1', 'model': path, 'cmd': cmd}
    finally:
        proc.terminate()
        try: proc.wait(10)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait(5)


def test_serve_generate_chat_and_cache(serve, tmp_path):
    "Chat generation through a real server; the second identical call, and a new process's, make no HTTP request."
    prompts = [[{'role': 'user', 'content': 'What is the capital of France?'}], 'What is the capital of Japan?']
    lm = OpenAILM(serve['model'], base_url=serve['url'], cache=CallCache(tmp_path))
    out = lm.generate(prompts, max_tokens=12)
    assert [len(o) for o in out] == [1, 1] and 'Paris' in out[0][0] and out[1][0].strip(), out
    assert lm.requests == 2 and lm.cache.stats()['misses'] == 2 and lm.cache.stats()['tokens_in'] > 0
    assert lm.generate(prompts, max_tokens=12) == out and lm.requests == 2 and lm.cache.stats()['hits'] == 2
    again = OpenAILM(serve['model'], base_url=serve['url'], cache=CallCache(tmp_path))
    assert again.generate(prompts, max_tokens=12) == out and again.requests == 0
    assert lm.generate(prompts[:1], max_tokens=13) and lm.requests == 3, "another decoding parameter is another call"


def test_serve_greedy_equals_local(serve):
    "The server's greedy output is the local backend's, for a plain completion and a chat prompt."
    import torch
    threads = torch.get_num_threads(); torch.set_num_threads(1)      # beside the server on a small machine
    try:
        local = LocalLM(serve['model'], device='cpu', dtype='fp32')
        chat = [[{'role': 'user', 'content': 'Name a fruit.'}]]
        plain = ['The capital of France is']
        api = OpenAILM(serve['model'], base_url=serve['url'])
        comp = OpenAILM(serve['model'], base_url=serve['url'], mode='completions')
        assert api.generate(chat, max_tokens=10) == local.generate(chat, max_tokens=10)
        assert comp.generate(plain, max_tokens=10) == local.generate(plain, max_tokens=10)
    finally: torch.set_num_threads(threads)


def test_serve_scoring_is_constrained(serve, tmp_path):
    """transformers serve ignores `logprobs`/`echo`: the probe says so, scoring is constrained, every reply is parsed
    strictly and counted, and a rerun (probe included) makes no request."""
    items = wvs_items(6)
    lm = OpenAILM(serve['model'], base_url=serve['url'], cache=CallCache(tmp_path), workers=2)
    assert lm.capabilities.score_options == 'constrained' and lm.requests == 1      # one probe request
    res = lm.score_options(items)
    assert all(isinstance(r, ChoiceScores) for r in res) and lm.requests == 1 + len(items)
    assert lm.parsed + lm.unparseable == len(items)
    for (p, opts), r in zip(items, res):
        assert r.options == opts and r.chosen == parse_choice(r.reply, opts)
        if r.parsed: assert r.logprob[r.chosen] == 0 and sorted(r.logprob)[-2] == -np.inf and r.choice() == r.chosen
        else: assert r.choice() == -1 and np.isnan(r.probs()).all()
    # the reply is the server's greedy answer to the instructed prompt
    p, opts = items[0]
    assert lm.generate([lm._with_instruction(p, opts)], max_tokens=lm.choice_max_tokens) == [[res[0].reply]]
    print(f"\nSmolLM2-135M via transformers serve: {lm.parsed}/{len(items)} replies parsed:", [r.reply for r in res])
    again = OpenAILM(serve['model'], base_url=serve['url'], cache=CallCache(tmp_path))
    assert [r.reply for r in again.score_options(items)] == [r.reply for r in res] and again.requests == 0
    assert again.capabilities.score_options == 'constrained' and again.requests == 0


def test_serve_n_samples_and_stop(serve):
    """n samples from a server that ignores `n`: one request per sample, seeds seed, seed+1, …; transformers serve
    samples only when told `do_sample` (else every sample is the greedy reply); replies end before the stop string."""
    prompts = ['Tell me a word.', 'Say hi.']
    plain = OpenAILM(serve['model'], base_url=serve['url'])
    out = plain.generate(prompts, n=2, temperature=1.0, max_tokens=8, seed=3)
    assert [len(o) for o in out] == [2, 2] and plain.requests == 4
    assert all(o[0] == o[1] for o in out), "transformers serve ignores temperature without do_sample"
    # the server's seed is process-wide torch state: seeded sampling reproduces only with one request in flight
    sampler = OpenAILM(serve['model'], base_url=serve['url'], extra_body={'generation_config': '{"do_sample": true}'}, workers=1)
    a = sampler.generate(prompts[:1], n=3, temperature=1.0, max_tokens=8, seed=3)
    assert a == sampler.generate(prompts[:1], n=3, temperature=1.0, max_tokens=8, seed=3), "seeded: reproducible"
    assert all(len(set(o)) > 1 for o in a), a
    q = [[{'role': 'user', 'content': 'What is the capital of France?'}]]
    full = plain.generate(q, max_tokens=12)[0][0]
    assert 'France' in full and plain.generate(q, max_tokens=12, stop=['France']) == [[full[:full.index('France')]]]


# --- log-prob scoring: a server that echoes log-probs computed by LocalLM -------------------------------------------

@pytest.fixture(scope='module')
def echo_server(tmp_path_factory):
    "An OpenAI-compatible server whose /completions echoes prompt log-probs from a (tiny) local model, as vLLM does."
    import torch
    tiny = tiny_model(tmp_path_factory.mktemp('tiny') / 'llama')
    local, lock = LocalLM(str(tiny), device='cpu', dtype='fp32'), threading.Lock()

    def reply(path, body):
        if not body.get('echo'): return 'OK'
        text = body['prompt']
        enc = local.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, starts = enc.input_ids, [a for a, _ in enc.offset_mapping]
        with lock, torch.inference_mode(): lp = torch.log_softmax(local.model(torch.tensor([ids])).logits[0].float(), -1)
        nxt = int(lp[-1].argmax())                                       # the one generated token (max_tokens=1)
        toks = [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])] + [local.tok.decode([nxt])]
        lps = [None] + [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))] + [float(lp[-1, nxt])]
        return {'id': 'x', 'object': 'text_completion', 'created': 0, 'model': body['model'],
                'usage': {'prompt_tokens': len(ids), 'completion_tokens': 1, 'total_tokens': len(ids) + 1},
                'choices': [{'index': 0, 'finish_reason': 'length', 'text': ''.join(toks),
                             'logprobs': {'tokens': toks, 'token_logprobs': lps, 'text_offset': starts + [len(text)], 'top_logprobs': None}}]}

    with ScriptedServer(reply=reply) as s:
        yield s, local, str(tiny)


def test_logprob_scoring_equals_local(echo_server, tmp_path):
    "Where the server echoes log-probs, the probe finds them and the option scores equal the local backend's."
    s, local, tiny = echo_server
    lm = OpenAILM('tiny', base_url=s.url, mode='completions', tokenizer=tiny, cache=CallCache(tmp_path), workers=3)
    assert lm.capabilities.score_options == 'logprobs'
    items = wvs_items(6)
    got, want = lm.score_options(items), local.score_options(items)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.logprob, w.logprob, atol=1e-4)
        assert g.n_tokens == w.n_tokens and g.choice() == w.choice()
    n = lm.requests
    assert [x.logprob for x in lm.score_options(items)] == [x.logprob for x in got] and lm.requests == n


def test_logprob_scoring_needs_tokenizer_for_chat(echo_server):
    "A chat prompt cannot be scored on the completions endpoint without a chat template: said before any request."
    s, _, _ = echo_server
    lm = OpenAILM('tiny', base_url=s.url, score_mode='logprobs')
    with pytest.raises(ValueError, match='tokenizer='): lm.score_options([([{'role': 'user', 'content': 'Hi'}], ['a'])])
    assert lm.requests == 0


# --- fault injection ------------------------------------------------------------------------------------------------

@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv('CULTURELLM_TEST_KEY', KEY)
    return 'CULTURELLM_TEST_KEY'


def assert_clean(err: BaseException):
    "One line, and no trace of the key in the message, the repr or the whole formatted traceback."
    text = ''.join(traceback.format_exception(err))
    assert '\n' not in str(err) and 'SECRET' not in str(err) + repr(err) + text, text


def test_transient_faults_are_retried(key):
    "429 (Retry-After: 0), 500, 503 and a reply slower than the timeout are retried; the fifth attempt succeeds."
    faults = [{'status': 429, 'headers': {'Retry-After': '0'}}, {'status': 500}, {'status': 503}, {'delay': 1.0}]
    with ScriptedServer(faults, reply='Paris') as s:
        lm = OpenAILM('m', base_url=s.url, api_key_env=key, timeout=0.3, backoff=0.01)
        t0 = time.time()
        assert lm.generate(['The capital of France?']) == [['Paris']]
        assert lm.requests == 5 and len(s.requests) == 5 and time.time() - t0 < 3
        auth = [{k.lower(): v for k, v in r['headers'].items()}.get('authorization') for r in s.requests]
        assert auth == [f'Bearer {KEY}'] * 5, "the key is sent — to the server, and only there"


def test_retry_after_is_honoured(key):
    "The server's Retry-After (seconds, or retry-after-ms) sets the wait, whatever the backoff."
    with ScriptedServer([{'status': 429, 'headers': {'Retry-After': '1'}}, {'status': 429, 'headers': {'retry-after-ms': '300'}}]) as s:
        lm = OpenAILM('m', base_url=s.url, api_key_env=key, backoff=0.001)
        t0 = time.time(); lm.generate(['Hi'])
        assert 1.3 <= time.time() - t0 < 3 and len(s.requests) == 3


def test_backoff_grows_without_retry_after(key):
    "Without Retry-After the waits double from `backoff` (with jitter in [0.5, 1.5))."
    with ScriptedServer([{'status': 503}] * 3) as s:
        lm = OpenAILM('m', base_url=s.url, api_key_env=key, backoff=0.1)
        t0 = time.time(); lm.generate(['Hi'])
        assert 0.35 <= time.time() - t0 < 1.5 and len(s.requests) == 4      # 0.1 + 0.2 + 0.4, each × [0.5, 1.5)


def test_gives_up_after_max_retries(key):
    "A fault that persists is raised after max_retries + 1 attempts, in one line, as transient."
    with ScriptedServer([{'status': 503}] * 5) as s:
        lm = OpenAILM('m', base_url=s.url, api_key_env=key, backoff=0.01, max_retries=3)
        with pytest.raises(OpenAILMError, match=r'HTTP 503.*gave up after 4 attempts') as e: lm.generate(['Hi'])
        assert e.value.transient and len(s.requests) == 4
        assert_clean(e.value)


def test_permanent_error_names_the_call_never_the_key(key):
    "A 400 is not retried; the error names method, model and the input's first 60 characters, and never the key."
    body = {'error': {'message': f'invalid request; you sent Authorization: Bearer {KEY}'}}
    question = 'How important is family in your life? Please answer on a four-point scale.'
    with ScriptedServer([{'status': 400, 'body': body}]) as s:
        lm = OpenAILM('gpt-x', base_url=s.url, api_key_env=key, backoff=0.01)
        with pytest.raises(OpenAILMError) as e: lm.generate([[{'role': 'system', 'content': 'sys'}, {'role': 'user', 'content': question}]])
        assert len(s.requests) == 1 and not e.value.transient
        assert str(e.value).startswith(f"OpenAILM.generate model='gpt-x' input={question[:60]!r}: HTTP 400: invalid request")
        assert_clean(e.value)
        assert 'SECRET' not in repr(lm) + json.dumps(lm.identity())


@pytest.mark.parametrize('body,why', [('{"choices": [ not json', 'not valid JSON'), ({'id': 'x', 'object': 'chat.completion'}, 'no choice'),
                                      ({'choices': [{'index': 0, 'message': {'role': 'assistant', 'content': None}}]}, 'no choice')],
                         ids=['not-json', 'no-choices', 'null-content'])
def test_malformed_reply_is_permanent(key, body, why):
    "A 200 reply that is not JSON, or not a completion, is one clear error after one attempt."
    with ScriptedServer([{'status': 200, 'body': body}]) as s:
        lm = OpenAILM('m', base_url=s.url, api_key_env=key, backoff=0.01)
        with pytest.raises(OpenAILMError, match=f'malformed reply: {why}') as e: lm.generate(['Hi'])
        assert len(s.requests) == 1 and lm.requests == 1
        assert_clean(e.value)


def test_missing_key_is_one_line(monkeypatch):
    "A remote server without a key is refused before any request, naming the variable; a local one needs none."
    monkeypatch.delenv('CULTURELLM_TEST_KEY', raising=False)
    with pytest.raises(OpenAILMError, match=r'^no API key for https://api\.example\.invalid/v1: set the environment variable CULTURELLM_TEST_KEY$'):
        OpenAILM('m', base_url='https://api.example.invalid/v1', api_key_env='CULTURELLM_TEST_KEY')
    with ScriptedServer(reply='ok') as s:
        assert OpenAILM('m', base_url=s.url, api_key_env='CULTURELLM_TEST_KEY').generate(['Hi']) == [['ok']]


def test_key_not_in_cache(key, tmp_path):
    "Neither the cache's keys nor its values hold the key."
    with ScriptedServer(reply='Paris') as s:
        lm = OpenAILM('m', base_url=s.url, api_key_env=key, cache=CallCache(tmp_path))
        lm.generate(['Hi']); lm.score_options([('Pick one', ['Paris', 'Rome'])])
    files = list(tmp_path.rglob('*.json'))
    assert len(files) == 3 and not any('SECRET' in f.read_text() or 'SECRET' in f.name for f in files)


def test_crash_loses_at_most_one_chunk(key, tmp_path):
    "Finished chunks are cached as they complete: after a permanent error mid-run, a rerun pays only for the rest."
    with ScriptedServer([{}] * 5 + [{'status': 400}], reply=lambda path, body: body['messages'][0]['content'].upper()) as s:
        lm = OpenAILM('m', base_url=s.url, api_key_env=key, cache=CallCache(tmp_path), workers=1)   # chunks of 4
        prompts = [f'p{i}' for i in range(10)]
        with pytest.raises(OpenAILMError, match="input='p5'"): lm.generate(prompts)
        again = OpenAILM('m', base_url=s.url, api_key_env=key, cache=CallCache(tmp_path), workers=1)
        assert again.generate(prompts) == [[p.upper()] for p in prompts]
        assert again.cache.stats()['hits'] == 4 and again.requests == 6


def test_concurrent_workers_keep_order(key):
    "Many prompts, several requests in flight: every answer lands at its prompt."
    with ScriptedServer(reply=lambda path, body: body['messages'][0]['content'][::-1]) as s:
        lm = OpenAILM('m', base_url=s.url, api_key_env=key, workers=8)
        prompts = [f'prompt {i}' for i in range(50)]
        assert lm.generate(prompts) == [[p[::-1]] for p in prompts] and len(s.requests) == 50
