"""`culturellm run --executor ray` against a real Ray cluster started by the test (its own file, so that pytest-xdist
can run it beside the runner's other tests)."""
import json, os, subprocess, sys
from pathlib import Path

import pytest

from test_run import cli


def test_ray_executor_on_a_local_cluster(tmp_path, data_root):
    """`--executor ray` against a real Ray cluster started here (`ray start --head`): the study's seeds, augment and
    finetune (trained by two processes, gloo, inside a Ray task) run in graph order; the manifest records the executor and
    the adapter `world_size` 2; a rerun reuses every task; an unreachable address and a stage asking for GPUs the cluster
    lacks are one-line errors with nothing written."""
    pytest.importorskip('ray')
    import socket
    with socket.socket() as s_: s_.bind(('127.0.0.1', 0)); port = s_.getsockname()[1]
    ray_bin = Path(sys.executable).with_name('ray')
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED='0')
    up = subprocess.run([str(ray_bin), 'start', '--head', f'--port={port}', '--num-cpus=2', '--num-gpus=0',
                         '--object-store-memory=100000000', '--include-dashboard=false', '--disable-usage-stats'],
                        capture_output=True, text=True, env=env, timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        addr, out = f'127.0.0.1:{port}', tmp_path / 'run'
        args = ('run', '--executor', 'ray', '--ray-address', addr, '--profile', 'smoke', '--cultures', 'arabic', '--out', str(out),
                '--stages', 'seeds,augment,finetune', '--set', 'finetune.processes=2', '--set', 'finetune.one=false')
        r = cli(*args)
        assert r.returncode == 0, r.stdout + r.stderr
        m = json.loads((out / 'manifest.json').read_text())
        assert m['executor']['name'] == 'ray' and m['executor']['address'] == addr and m['executor']['nodes'] == 1
        assert {k: v['status'] for k, v in m['stages'].items()} == {'seeds/arabic': 'ok', 'augment/all': 'ok', 'finetune/arabic': 'ok'}
        info = json.loads((out / 'adapters' / 'arabic' / 'training.json').read_text())
        assert info['world_size'] == 2 and info['steps'] == 4
        assert m['stages']['finetune/arabic']['finished'] >= m['stages']['augment/all']['finished']
        r = cli(*args)
        assert r.returncode == 0, r.stdout + r.stderr
        assert all(v.get('reused') for v in json.loads((out / 'manifest.json').read_text())['stages'].values())
        r = cli('run', '--executor', 'ray', '--ray-address', addr, '--profile', 'smoke', '--stages', 'seeds', '--out', str(tmp_path / 'g'),
                '--set', 'resources.seeds.gpus=1')
        assert r.returncode == 2 and not (tmp_path / 'g').exists()
        assert r.stderr.strip().splitlines()[-1].startswith("culturellm: error: config key 'resources.seeds.gpus': a task asks for 1 GPUs, but the Ray cluster")
        from culturellm.config import ConfigError
        from culturellm.scale import RayExecutor
        rx = RayExecutor(addr)                    # a node that does not see the notebooks (here: a folder that does not exist)
        try:
            with pytest.raises(ConfigError, match=r"Ray node .* does not see .*nowhere/00_seeds.ipynb; the run folder and the notebooks must be"):
                rx.check_folder(out, tmp_path / 'nowhere')
            assert not list(out.glob('.ray-probe-*'))
        finally: rx.close()
    finally:
        subprocess.run([str(ray_bin), 'stop', '--force'], capture_output=True, env=env, timeout=120)
    r = cli('run', '--executor', 'ray', '--ray-address', addr, '--profile', 'smoke', '--stages', 'seeds', '--out', str(tmp_path / 'x'))
    assert r.returncode == 2 and not (tmp_path / 'x').exists()
    assert f"culturellm: error: --ray-address {addr}: no Ray cluster answers there" in r.stderr

