"""OpenAI fine-tuning against `FineTuneServer`, a local server that speaks the fine-tuning endpoints to the official
client: file validation errors name the file and line; the whole flow on a real seed file; a failed and a cancelled
job; reruns after success, after a crash in a poll and after a killed process pay for nothing twice; transient
faults and a lost reply are retried without a second job; the key never reaches the state; the runner folds the
job's record into the manifest."""
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import nbformat
import openai
import pytest

from culturellm.api import OpenAILM, OpenAILMError
from culturellm.openai_ft import (FineTuneFileError, FineTuneJobError, FineTuneServer, finetuned_backend, openai_finetune,
                                  record_finetune, validate_finetune_file)
from culturellm.seeds import CULTURES, culture_answers, load_questions, sft_record, write_chat_jsonl, wvs_counts

KEY = 'sk-test-SECRET-ft-key'
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def samples():
    "The Korean seed samples, built as 00_seeds builds them."
    c, qs = CULTURES['korean'], load_questions()
    ans = culture_answers(c, wvs_counts(c), 'majority', qs)
    return [sft_record(q, c, ans[q.id]) for q in qs if isinstance(ans[q.id], int)]


@pytest.fixture
def train(tmp_path, samples):
    return write_chat_jsonl(samples, tmp_path / 'korean.jsonl')


@pytest.fixture
def srv(monkeypatch):
    "A server that requires KEY, with KEY in the environment as OPENAI_API_KEY."
    monkeypatch.setenv('OPENAI_API_KEY', KEY)
    with FineTuneServer(api_key=KEY) as s: yield s


def tune(path, s, state, **kw):
    return openai_finetune(path, 'gpt-3.5-turbo', base_url=s.url, suffix='korean', state_file=state,
                           poll_interval=0, backoff=0.01, progress=False, **kw)


def write_lines(path, lines):
    path.write_bytes(b''.join((l if isinstance(l, bytes) else json.dumps(l).encode()) + b'\n' for l in lines))
    return path


# --- validation before upload -------------------------------------------------------------------------------------

def test_validation_summary(train, samples):
    s = validate_finetune_file(train)
    assert s['examples'] == len(samples) >= 40
    assert s['roles'] == {'system': len(samples), 'user': len(samples), 'assistant': len(samples)}
    assert 0 < s['max_example_tokens'] <= s['tokens']


BAD = {  # a bad example on line 2 (of 10): (what to put there, where the error points, what it says)
    'json': (lambda m: b'{"messages": [{"role": "user"', 'line 2', 'not valid JSON'),
    'shape': (lambda m: {'msgs': m}, 'line 2', "expected {'messages': [...]}"),
    'no_assistant': (lambda m: {'messages': m[:2]}, 'line 2', "the last message must be the assistant's answer"),
    'role': (lambda m: {'messages': [dict(m[0], role='bot')] + m[1:]}, 'line 2, message 0', 'expected a role (system, user or assistant)'),
    'empty': (lambda m: {'messages': m[:2] + [dict(m[2], content='')]}, 'line 2, message 2', 'non-empty string content'),
    'weight': (lambda m: {'messages': m[:2] + [dict(m[2], weight=2)]}, 'line 2, message 2 (assistant)', 'weight 2; expected 0 or 1'),
    'utf8': (lambda m: b'\xff{}', 'line 2', 'is not UTF-8'),
}


@pytest.mark.parametrize('kind', BAD)
def test_validation_errors_name_file_and_line(tmp_path, samples, kind):
    make, where, what = BAD[kind]
    p = write_lines(tmp_path / 'bad.jsonl', [samples[0], make(samples[1]['messages'])] + samples[2:10])
    with pytest.raises(FineTuneFileError) as e: validate_finetune_file(p)
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith(f"{p}, {where}:") and what in msg, msg


def test_too_few_examples(tmp_path, samples):
    p = write_lines(tmp_path / 'few.jsonl', samples[:9])
    with pytest.raises(FineTuneFileError, match=f"^{p}: 9 examples; expected at least 10$"): validate_finetune_file(p)


def test_invalid_file_is_refused_before_any_request(tmp_path, samples, srv):
    p = write_lines(tmp_path / 'few.jsonl', samples[:3])
    with pytest.raises(FineTuneFileError, match='3 examples; expected at least 10'): tune(p, srv, tmp_path / 's.json')
    assert sum(srv.calls.values()) == 0 and not (tmp_path / 's.json').exists()


def test_server_fails_a_job_on_a_bad_file(tmp_path, samples, srv):
    "With validation skipped, the server's own check fails the job as the API does: invalid_training_file."
    p = write_lines(tmp_path / 'few.jsonl', samples[:3])
    with pytest.raises(FineTuneJobError, match=r'failed: invalid_training_file: .*3 examples; expected at least 10.* \(param training_file\)'):
        tune(p, srv, tmp_path / 's.json', validate=False)


# --- the flow -----------------------------------------------------------------------------------------------------

def test_flow_records_a_usable_model(tmp_path, train, samples, srv):
    state = tmp_path / 'state.json'
    rec = tune(train, srv, state)
    job = next(iter(srv.jobs.values()))['job']
    assert rec['status'] == 'succeeded' and rec['job_id'] == job['id'] and rec['file_id'] == job['training_file']
    assert rec['fine_tuned_model'] == f"ft:gpt-3.5-turbo:personal:korean:{job['id'][-8:]}" == job['fine_tuned_model']
    assert rec['model'] == 'gpt-3.5-turbo' and rec['trained_tokens'] == validate_finetune_file(train)['tokens'] * 3
    assert rec['created_at'] and rec['finished_at'] and rec['events'][-1]['message'] == 'The job has successfully completed'
    st, = json.loads(state.read_text())['jobs'].values()
    assert st['record'] == rec and st['status'] == 'succeeded'
    p = record_finetune(tmp_path / 'run', 'korean', rec)
    assert json.loads(p.read_text()) == dict(rec, culture='korean')
    lm = finetuned_backend(json.loads(p.read_text()))
    assert isinstance(lm, OpenAILM) and lm.identity() == {'backend': 'openai', 'base_url': srv.url, 'model': rec['fine_tuned_model'], 'mode': 'chat'}
    m = samples[3]['messages']
    assert lm.generate([m[:2]]) == [[m[2]['content']]]


def test_hyperparameters_go_under_method(tmp_path, train, srv):
    rec = tune(train, srv, tmp_path / 's.json', hyperparameters={'n_epochs': 2}, seed=7)
    job = next(iter(srv.jobs.values()))['job']
    assert job['method']['supervised']['hyperparameters']['n_epochs'] == 2 == rec['hyperparameters']['n_epochs'] and job['seed'] == 7
    assert rec['trained_tokens'] == validate_finetune_file(train)['tokens'] * 2


def test_rerun_after_success_makes_no_request(tmp_path, train, srv):
    state = tmp_path / 'state.json'
    rec = tune(train, srv, state); calls = dict(srv.calls)
    assert calls['files.create'] == 1 and calls['jobs.create'] == 1
    assert tune(train, srv, state) == rec and dict(srv.calls) == calls
    rec2 = tune(train, srv, state, hyperparameters={'n_epochs': 1})           # a new setting is a new job, on the same upload
    assert rec2['job_id'] != rec['job_id'] and srv.calls['files.create'] == 1 and srv.calls['jobs.create'] == 2


def test_failed_job_raises_and_is_recorded(tmp_path, train, srv):
    srv.fail = {'code': 'server_error', 'message': 'The job failed due to an internal error.'}
    state = tmp_path / 'state.json'
    with pytest.raises(FineTuneJobError) as e: tune(train, srv, state)
    jid = next(iter(srv.jobs))
    assert str(e.value) == f"fine-tuning job {jid} failed: server_error: The job failed due to an internal error."
    assert e.value.record['status'] == 'failed' and e.value.record['fine_tuned_model'] is None
    st, = json.loads(state.read_text())['jobs'].values()
    assert (st['job_id'], st['status'], st['record']['error']['code']) == (jid, 'failed', 'server_error')
    p = record_finetune(tmp_path / 'run', 'korean', e.value.record)
    assert json.loads(p.read_text())['status'] == 'failed'
    with pytest.raises(ValueError, match="status 'failed'"): finetuned_backend(e.value.record)
    calls = dict(srv.calls)
    with pytest.raises(FineTuneJobError, match=jid): tune(train, srv, state)  # recorded: raised again, nothing asked
    assert dict(srv.calls) == calls
    srv.fail = None
    rec = tune(train, srv, state, retry_failed=True)
    assert rec['status'] == 'succeeded' and rec['job_id'] != jid
    assert (srv.calls['files.create'], srv.calls['jobs.create']) == (1, 2)


def test_cancelled_job_raises(tmp_path, train, srv):
    cl = openai.OpenAI(api_key=KEY, base_url=srv.url, max_retries=0)
    def cancel(job):
        if job.status == 'running': cl.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(FineTuneJobError, match=r'^fine-tuning job ftjob-\w+ cancelled$'): tune(train, srv, tmp_path / 's.json', on_poll=cancel)


def test_crash_in_a_poll_resumes_the_same_job(tmp_path, train, srv):
    state = tmp_path / 'state.json'
    def crash(job):
        if job.status == 'running': raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): tune(train, srv, state, on_poll=crash)
    st, = json.loads(state.read_text())['jobs'].values()
    assert st['status'] == 'running' and 'record' not in st
    rec = tune(train, srv, state)
    assert rec['job_id'] == st['job_id'] and rec['status'] == 'succeeded'
    assert (srv.calls['files.create'], srv.calls['jobs.create'], len(srv.files), len(srv.jobs)) == (1, 1, 1, 1)


def test_crash_between_upload_and_job_resumes_without_upload(tmp_path, train, srv):
    "A permanent error at job creation (a crash there is the same) leaves the upload recorded; the rerun reuses it."
    srv.faults = {'jobs.create': {1: 400}}
    state = tmp_path / 'state.json'
    with pytest.raises(OpenAILMError, match='fine_tuning.jobs.create .*HTTP 400'): tune(train, srv, state)
    assert json.loads(state.read_text())['jobs'] == {} and len(srv.files) == 1
    assert tune(train, srv, state)['status'] == 'succeeded'
    assert (srv.calls['files.create'], srv.calls['files.retrieve'], len(srv.jobs)) == (1, 1, 1)


def test_killed_process_resumes_the_same_job(tmp_path, train, srv):
    "A process killed (SIGKILL) while it waits for the job: the rerun polls that job, with no upload or job of its own."
    state = tmp_path / 'state.json'
    code = textwrap.dedent(f"""
        from culturellm.openai_ft import openai_finetune
        openai_finetune({str(train)!r}, 'gpt-3.5-turbo', base_url={srv.url!r}, suffix='korean', state_file={str(state)!r}, poll_interval=3600)
    """)
    proc = subprocess.Popen([sys.executable, '-c', code], env=dict(os.environ, OPENAI_API_KEY=KEY), stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (state.exists() and json.loads(state.read_text())['jobs'] and srv.calls['jobs.retrieve']):
            assert proc.poll() is None and time.time() < deadline, 'the child did not create its job'
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL); proc.wait()
    st, = json.loads(state.read_text())['jobs'].values()
    rec = tune(train, srv, state)
    assert rec['job_id'] == st['job_id'] and rec['status'] == 'succeeded'
    assert (srv.calls['files.create'], srv.calls['jobs.create'], len(srv.jobs)) == (1, 1, 1)


def test_timeout_then_rerun_goes_on_waiting(tmp_path, train, srv):
    state = tmp_path / 'state.json'
    with pytest.raises(TimeoutError, match=r'still (queued|running) after 0 s; run again'): tune(train, srv, state, timeout=0)
    assert tune(train, srv, state)['status'] == 'succeeded' and srv.calls['jobs.create'] == 1


def test_transient_faults_and_a_lost_reply_are_retried(tmp_path, train, srv):
    srv.faults = {'files.create': {1: 429}, 'jobs.create': {1: {'status': 502, 'act': True}}, 'jobs.retrieve': {1: 500, 3: 503}}
    rec = tune(train, srv, tmp_path / 's.json')
    assert rec['status'] == 'succeeded'
    assert (len(srv.files), len(srv.jobs)) == (1, 1), "the lost reply's job is adopted, not created again"
    assert (srv.calls['files.create'], srv.calls['jobs.create'], srv.calls['jobs.list']) == (2, 1, 2)


def test_transient_faults_give_up_in_one_line(tmp_path, train, srv):
    srv.faults = {'files.create': {n: 500 for n in range(1, 10)}}
    with pytest.raises(OpenAILMError) as e: tune(train, srv, tmp_path / 's.json', max_retries=2)
    assert e.value.transient and str(e.value).startswith(f"files.create file={str(train)!r}: HTTP 500") and 'gave up after 3 attempts' in str(e.value)
    assert srv.calls['files.create'] == 3


def test_key_never_written(tmp_path, train, srv):
    state = tmp_path / 'state.json'
    tune(train, srv, state)
    srv.fail = {'code': 'server_error', 'message': 'boom'}
    with pytest.raises(FineTuneJobError) as e: tune(train, srv, state, hyperparameters={'n_epochs': 1})
    record_finetune(tmp_path / 'run', 'korean', e.value.record)
    for p in [state, *tmp_path.joinpath('run').rglob('*.json')]: assert KEY not in p.read_text(), p
    assert KEY not in str(e.value)
    with pytest.raises(OpenAILMError) as e2:
        openai_finetune(train, client=openai.OpenAI(api_key=KEY + 'x', base_url=srv.url, max_retries=0), state_file=tmp_path / 'w.json', progress=False)
    assert 'HTTP 401' in str(e2.value) and KEY not in str(e2.value)


def test_no_key_for_openai_is_one_line(tmp_path, train, monkeypatch):
    monkeypatch.delenv('OPENAI_API_KEY', raising=False)
    with pytest.raises(OpenAILMError, match='no API key for https://api.openai.com/v1: set the environment variable OPENAI_API_KEY'):
        openai_finetune(train, state_file=tmp_path / 's.json')


# --- the runner folds the record into the manifest ---------------------------------------------------------------

def test_runner_folds_the_record_into_the_manifest(tmp_path, train, srv, monkeypatch):
    "A finetune stage notebook that records a job: the manifest's finetune/<culture> entry carries it, also when reused."
    from culturellm import run
    from culturellm.config import get_config
    monkeypatch.setattr(run, 'code_fingerprint', lambda: 'fixed')   # the library may change under a shared checkout mid-test
    rec = tune(train, srv, tmp_path / 's.json')
    nbs = tmp_path / 'nbs'; nbs.mkdir()
    nbformat.write(nbformat.v4.new_notebook(), nbs / '00_seeds.ipynb')
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("culture = 'arabic'\nrun_dir = None\nprofile = 'smoke'\nconfig_file = None", metadata={'tags': ['parameters']}),
                nbformat.v4.new_code_cell(f"from culturellm.openai_ft import record_finetune\nrecord_finetune(run_dir, culture, {rec!r})")]
    nb.metadata['kernelspec'] = {'display_name': 'python3', 'language': 'python', 'name': 'python3'}
    nbformat.write(nb, nbs / '02_finetune.ipynb')
    cfg = get_config('smoke'); cfg.cultures = ['korean']
    m = run.run_study(cfg, tmp_path / 'run', stages='finetune', nbs=nbs, progress=False)
    e = m['stages']['finetune/korean']
    assert e['status'] == 'ok', e
    assert e['openai_ft']['fine_tuned_model'] == rec['fine_tuned_model'] and e['openai_ft']['culture'] == 'korean'
    m2 = run.run_study(cfg, tmp_path / 'run', stages='finetune', nbs=nbs, progress=False)   # reused: the record stays
    assert m2['stages']['finetune/korean'].get('reused') and m2['stages']['finetune/korean']['openai_ft'] == e['openai_ft']
