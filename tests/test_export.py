"""`culturellm export`: a smoke run's adapters as release folders whose model card says what the run measured,
read from its files (the expected strings are computed here from the CSVs, so a card that drifts fails), and that load."""
import json, math, os, shutil, socket, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

from culturellm.config import ConfigError, sha256_file
from culturellm.export import add_export_parser, card_metadata, export_adapter, push_export, check_push

REPO = Path(__file__).resolve().parents[1]


def _ci(v, lo, hi) -> str:
    "The card's interval format, written out independently: '0.708 [0.676, 0.751]', or '(no interval)'."
    ok = lambda x: x is not None and not (isinstance(x, float) and math.isnan(x))
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if ok(lo) and ok(hi) else f"{v:.3f} (no interval)"


@pytest.fixture(scope='module')
def run_dir(smoke_run):
    out, proc, _ = smoke_run
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return Path(out)


@pytest.fixture(scope='module')
def arabic(run_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp('export') / 'arabic'
    export_adapter(run_dir, 'arabic', dest)
    return dest


def test_files_and_record(arabic, run_dir):
    "The adapter's files, training.json as the run wrote it, the card, and a record with every file's sha256 and the run's revision."
    names = {p.name for p in arabic.iterdir()}
    assert {'adapter_config.json', 'adapter_model.safetensors', 'training.json', 'README.md', 'culturellm_export.json'} <= names
    assert json.loads((arabic / 'training.json').read_text()) == json.loads((run_dir / 'adapters' / 'arabic' / 'training.json').read_text())
    assert sha256_file(arabic / 'adapter_model.safetensors') == sha256_file(run_dir / 'adapters' / 'arabic' / 'adapter_model.safetensors')
    rec = json.loads((arabic / 'culturellm_export.json').read_text())
    assert rec['files'] == {p.name: sha256_file(p) for p in arabic.iterdir() if p.name != 'culturellm_export.json'}
    man = json.loads((run_dir / 'manifest.json').read_text())
    assert rec['git'] == man['git'] and rec['profile'] == 'smoke' and rec['culture'] == 'arabic'
    assert rec['sources']['adapter'] == str((run_dir / 'adapters' / 'arabic').resolve())
    assert not [p for p in arabic.parent.iterdir() if p.name.startswith('.')]   # no temporary folder left beside it


def test_card_front_matter_and_facts(arabic, run_dir):
    "Front matter (library, licence, tags), the base model, the countries, the answer rule, the hyperparameters of training.json."
    card = (arabic / 'README.md').read_text()
    meta = card_metadata(card)
    T = json.loads((run_dir / 'adapters' / 'arabic' / 'training.json').read_text())
    assert T['base']['model'] == 'tiny-random'
    assert meta['library_name'] == 'peft' and meta['license'] == 'unknown' and 'base_model' not in meta   # random weights: no Hub id
    assert 'culture-arabic' in meta['tags'] and meta['language'] == ['en']
    assert "Base model: `tiny-random`" in card and T['base']['sha256'] in card
    assert 'Iraq (IRQ' in card and 'Jordan (JOR' in card
    rule = json.loads((run_dir / 'config.json').read_text())['seeds']['answer_rule']
    assert f"**Answer rule** (`seeds.answer_rule`): `{rule}`" in card
    for k in ('r', 'alpha', 'dropout', 'lr', 'batch_size', 'max_steps', 'precision', 'grad_accum'):
        assert f"| `{k}` | {T['config'][k]} |" in card, k
    assert f"| steps (optimizer steps run) | {T['steps']} |" in card
    assert f"| world_size (training processes) | {T['world_size']} |" in card
    assert 'MIGRATION' in card and 'smoke profile' in card                 # held-out topic and the profile's limit


def test_card_results_come_from_the_csvs(arabic, run_dir):
    "Every result the card prints equals the run's files, formatted: alignment per split, agreement, macro-F1 per task."
    card = (arabic / 'README.md').read_text()
    al = pd.read_csv(run_dir / 'results' / 'alignment_arabic.csv')
    rows = al[al.model.isin(['arabic', 'base']) & (al.metric == 'wvs_1-jsd')]
    assert len(rows) >= 4
    for r in rows.itertuples():
        w = al[(al.model == r.model) & (al.task == r.task) & (al.metric == 'wvs_wasserstein')].iloc[0]
        m = f"**{r.model}**" if r.model == 'arabic' else r.model
        assert f"| {r.task.removeprefix('WVS: ')} | {m} | {_ci(r.value, r.ci_low, r.ci_high)} | {_ci(w.value, w.ci_low, w.ci_high)} | {int(r.n)} |" in card, r
    ag = pd.DataFrame(json.loads((run_dir / 'results' / 'finetune_agreement_arabic.json').read_text()))
    for r in ag.itertuples():
        m = f"**{r.model}**" if r.model == 'tuned' else r.model
        assert f"| {r.culture} | {r.split} | {m} | {_ci(r.agreement, r.ci_low, r.ci_high)} | {int(r.n)} |" in card, r
    sc = pd.read_csv(run_dir / 'results' / 'scores_arabic.csv')
    f1 = sc[(sc.metric == 'macro_f1') & (sc.status == 'ok')]
    for t in f1.task.unique():
        b = f1[(f1.task == t) & (f1.model == 'base')].iloc[0]; a = f1[(f1.task == t) & (f1.model == 'arabic')].iloc[0]
        assert f"| {t} | {_ci(b.value, b.ci_low, b.ci_high)} | {_ci(a.value, a.ci_low, a.ci_high)} |" in card, t
    assert 'Results absent' not in card


def test_adapter_loads_and_scores(arabic, run_dir):
    "The exported adapter loads on its base model and scores as the run's own does."
    from culturellm.llm import LocalLM
    base = json.loads((arabic / 'training.json').read_text())['base']['model']
    lm = LocalLM(model=base, dtype='fp32', cache=None)
    item = [([{'role': 'system', 'content': 'You are an Arabic chatbot.'}, {'role': 'user', 'content': 'Work is a duty. Answer 1-4.'}], ['1', '2', '3', '4'])]
    lm.load_adapter(arabic, 'x'); got = lm.score_options(item)[0].probs()
    lm.load_adapter(run_dir / 'adapters' / 'arabic', 'src'); want = lm.score_options(item)[0].probs()
    assert abs(sum(got) - 1) < 1e-5 and max(abs(a - b) for a, b in zip(got, want)) < 1e-6


def test_one(run_dir, tmp_path):
    "CultureLLM-One: every culture's countries, its 'One' rows from each culture's files, its own agreement file."
    if not (run_dir / 'adapters' / 'one' / 'adapter_config.json').exists(): pytest.skip('the smoke run trained no One adapter')
    export_adapter(run_dir, 'one', tmp_path / 'one')
    card = (tmp_path / 'one' / 'README.md').read_text()
    from culturellm.seeds import CULTURES
    assert 'CultureLLM-One' in card
    for c in ('arabic', 'english'):
        for code, name in zip(CULTURES[c].countries, CULTURES[c].country_names): assert f"{name} ({code}" in card, name
    for c in ('arabic', 'english'):
        al = pd.read_csv(run_dir / 'results' / f'alignment_{c}.csv')
        r = al[(al.model == 'One') & (al.metric == 'wvs_1-jsd')].iloc[0]
        assert f"| **One** | {_ci(r.value, r.ci_low, r.ci_high)} |" in card


def test_missing_results_are_named(run_dir, tmp_path):
    "A run without its result files still exports (the adapter is all that is required); the card names what is absent."
    run = tmp_path / 'run'
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns('*.ipynb', 'figures', 'results'))
    export_adapter(run, 'arabic', tmp_path / 'out')
    card = (tmp_path / 'out' / 'README.md').read_text()
    for f in ('alignment_arabic.csv', 'scores_arabic.csv', 'finetune_agreement_arabic.json'):
        assert f"`results/{f}` does not exist" in card, f
    assert '### WVS alignment' not in card


def test_errors(run_dir, arabic, tmp_path):
    "One-line ConfigErrors naming the path: an existing DEST (unless --force), not a run folder, no such adapter."
    def err(f):
        with pytest.raises(ConfigError) as e: f()
        assert '\n' not in str(e.value); return str(e.value)
    assert 'already exists; pass --force' in err(lambda: export_adapter(run_dir, 'arabic', arabic))
    export_adapter(run_dir, 'arabic', arabic, force=True); assert (arabic / 'README.md').exists()
    assert f"{tmp_path}: not a run folder" in err(lambda: export_adapter(tmp_path, 'arabic', tmp_path / 'x'))
    m = err(lambda: export_adapter(run_dir, 'english-dist', tmp_path / 'x'))
    assert 'adapters/english-dist: no adapter' in m and 'adapters in this run: ' in m and 'arabic' in m
    assert 'not a culture of this run' in err(lambda: (export_adapter(run_dir, 'arabic-without-migration', tmp_path / 'x')))
    assert not (tmp_path / 'x').exists()


def test_push_needs_a_token(run_dir, tmp_path, monkeypatch):
    "--push without a token stops before writing anything; a Hub that refuses is one line naming the endpoint."
    import argparse, huggingface_hub
    monkeypatch.delenv('HF_TOKEN', raising=False)
    monkeypatch.setattr(huggingface_hub, 'get_token', lambda: None)
    p = argparse.ArgumentParser(); add_export_parser(p.add_subparsers(dest='cmd'))
    a = p.parse_args(['export', str(run_dir), 'arabic', str(tmp_path / 'd'), '--push', 'me/arabic-smoke'])
    with pytest.raises(ConfigError, match='no Hugging Face token'): a.func(a)
    assert not (tmp_path / 'd').exists()
    s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]; s.close()   # nothing listens: refused
    monkeypatch.setenv('HF_ENDPOINT', f'http://127.0.0.1:{port}')
    export_adapter(run_dir, 'arabic', tmp_path / 'd')
    with pytest.raises(ConfigError) as e: push_export(tmp_path / 'd', 'me/arabic-smoke', token='hf_test')
    assert f'upload to http://127.0.0.1:{port} failed' in str(e.value) and '\n' not in str(e.value)


def test_cli(run_dir, tmp_path):
    "`culturellm export` through the command's own entry point (once 09_run dispatches it): exit 0, then 2 with one line."
    from culturellm import run as R
    try: R._parser().parse_args(['export', str(run_dir), 'arabic', str(tmp_path / 'c')])
    except SystemExit: pytest.skip('export is not wired into the culturellm command (09_run) yet')
    cmd = [sys.executable, '-c', 'import sys; from culturellm.run import main; sys.exit(main())', 'export', str(run_dir), 'arabic', str(tmp_path / 'c')]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / 'c' / 'README.md').exists() and 'exported adapter arabic' in r.stdout
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count('\n') == 0 and 'already exists' in r.stderr and 'Traceback' not in r.stderr
    env = {k: v for k, v in os.environ.items() if k != 'HF_TOKEN'}
    env.update(HF_TOKEN_PATH=str(tmp_path / 'no-token'), HF_HOME=str(tmp_path / 'hf'))
    r = subprocess.run(cmd[:-1] + [str(tmp_path / 'p'), '--push', 'me/x'], capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert r.returncode == 2 and 'no Hugging Face token' in r.stderr and 'Traceback' not in r.stderr and not (tmp_path / 'p').exists()
