"""`culturellm plan`: the paper plan costs something, and the smoke plan's tokens are the smoke run's (its usage ledger)."""
import argparse, json

import pytest

from culturellm.config import ConfigError
from culturellm.plan import add_plan_parser, cmd_plan


def plan(*argv, capsys=None):
    "The `plan` command's JSON for `argv`."
    ap = argparse.ArgumentParser(); add_plan_parser(ap.add_subparsers(dest='cmd'))
    args = ap.parse_args(['plan', *argv, '--json'])
    assert args.func(args) == 0
    return json.loads(capsys.readouterr().out)


def test_paper_plan_costs(data_root, capsys, monkeypatch):
    """`culturellm plan --profile paper --cultures all --json` gives positive GPU-hours and API cost, per task and in total
    (here for the stages that train and the one that pays an API judge: the whole study's plan takes ~45 s on 2 cores)."""
    monkeypatch.setenv('CULTURELLM_DATA', str(data_root))
    p = plan('--profile', 'paper', '--cultures', 'all', '--stages', 'finetune,ablation', capsys=capsys)
    assert p['total']['gpu_hours'] > 0 and p['total']['api_cost_usd'] > 0
    assert {'calls', 'tokens', 'gpu_hours', 'api_cost_usd'} <= set(p['total'])
    assert all({'stage', 'culture', 'calls', 'tokens', 'train_tokens', 'gpu_hours'} <= set(t) for t in p['tasks'])
    from culturellm.seeds import load_cultures, resolve_cultures
    assert {t['culture'] for t in p['tasks'] if t['stage'] == 'finetune'} == set(resolve_cultures(['all'], load_cultures(None))) | {'one'}


def test_smoke_plan_matches_the_ledger(smoke_run, data_root, capsys, monkeypatch):
    """The smoke plan's token total is within 10% of the tokens the smoke run's stages recorded in usage/ (computed and
    cached calls both: the ledger counts what every call consumed, whatever the cache held)."""
    monkeypatch.setenv('CULTURELLM_DATA', str(data_root))
    out, r, _ = smoke_run
    assert r.returncode == 0, r.stdout + r.stderr
    p = plan('--profile', 'smoke', '--accelerator', 'cpu', capsys=capsys)
    got = 0
    for f in (out / 'usage').glob('*/*.json'):
        for s in json.loads(f.read_text()).values():
            got += s['tokens_in'] + s['tokens_out'] + s.get('cached_tokens_in', 0) + s.get('cached_tokens_out', 0)
    want = p['total']['tokens']
    print(f"smoke plan {want} tokens, ledger {got}: ratio {want / got:.3f}")
    assert got > 0 and abs(want - got) <= 0.1 * got


@pytest.mark.parametrize('argv, msg', [(['--accelerator', 'tpu'], "--accelerator 'tpu'"), (['--price-out', '-2'], '--price-out -2'),
                                       (['--stages', 'nope'], "unknown stage 'nope'"), (['--cultures', 'atlantis'], 'atlantis')])
def test_bad_input_is_a_config_error(argv, msg):
    ap = argparse.ArgumentParser(); add_plan_parser(ap.add_subparsers(dest='cmd'))
    with pytest.raises(ConfigError, match=msg.replace('(', r'\(')):
        cmd_plan(ap.parse_args(['plan', '--profile', 'smoke', *argv]))
