"""`culturellm data fetch` and `culturellm data verify` against a real HTTP server on the loopback interface.

The server serves tar.gz archives built from the study data (once per session) and laid out as GitHub lays out its
archives, `<repo>-<commit>/data/...`, at GitHub's paths, so `--mirror http://127.0.0.1:PORT` stands in for
https://github.com. One test fetches both complete releases (55 MB) and verifies them; the failure cases use the small
Global Gallery release."""
import io, json, os, shutil, socket, subprocess, sys, tarfile, threading, time
from contextlib import contextmanager
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from pathlib import Path

import pytest

from culturellm import fetch as F

REPO = Path(__file__).resolve().parents[1]
M = F.load_manifest()
GG = M['releases']['global-gallery']
SMALL = 'global-gallery'


def url_path(rel: dict) -> str:
    "The path GitHub serves the release's archive at."
    return f"/{rel['repo']}/archive/{rel['commit']}.tar.gz"


def build_archive(root: Path, name: str, rel: dict, flip: str | None = None) -> bytes:
    "The release's files under `root/name` as GitHub's archive lays them out (plus files the study does not use); `flip`: one byte changed."
    buf = io.BytesIO()
    top = f"{rel['repo'].split('/')[1]}-{rel['commit']}"
    with tarfile.open(fileobj=buf, mode='w:gz', compresslevel=1) as tar:
        def add(arcname, data):
            ti = tarfile.TarInfo(arcname); ti.size = len(data); ti.mtime = 1_700_000_000; tar.addfile(ti, io.BytesIO(data))
        add(f'{top}/README.md', b'# the repository README, not data')
        add(f'{top}/data/make_data.py', b'print("a script the study does not use")')
        for rp in rel['files']:
            data = bytearray((root / name / rp).read_bytes())
            if rp == flip: data[len(data) // 2] ^= 0x20
            add(f'{top}/data/{rp}', bytes(data))
    return buf.getvalue()


@pytest.fixture(scope='session')
def archives(data_root):
    "{release: archive bytes} of both releases, built once from the data root."
    t = time.time()
    out = {name: build_archive(data_root, name, rel) for name, rel in M['releases'].items()}
    print(f"archives built in {time.time() - t:.1f} s")
    return out


class Server:
    "A loopback HTTP server: `routes` {path: bytes}; `cut` paths whose first request is cut off mid-body; `hits` the paths asked for."
    def __init__(self):
        self.routes, self.cut, self.hits = {}, set(), []
        srv = self
        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                srv.hits.append(self.path)
                body = srv.routes.get(self.path)
                if body is None: self.send_error(404, 'Not Found'); return
                self.send_response(200)
                self.send_header('Content-Type', 'application/x-gzip'); self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                if self.path in srv.cut:   # the connection drops halfway through the body
                    srv.cut.discard(self.path)
                    self.wfile.write(body[:len(body) // 2]); self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)
            def log_message(self, *a): pass
        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server():
    s = Server()
    th = threading.Thread(target=s.httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True); th.start()
    yield s
    s.httpd.shutdown(); s.httpd.server_close()


def cli(capsys, *argv) -> tuple[int, str, str]:
    "Run `culturellm data ...` in this process: (exit status, stdout, stderr)."
    rc = F.main(['data', *map(str, argv)])
    o = capsys.readouterr()
    return rc, o.out, o.err


def one_line_error(err: str, *contains):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('culturellm: error: '), err
    assert 'Traceback' not in err
    for c in contains: assert c in lines[0], (c, lines[0])
    return lines[0]


def files_under(d: Path) -> list:
    return sorted(p.relative_to(d).as_posix() for p in d.rglob('*') if p.is_file())


def test_manifest_is_the_data_roots(data_root):
    "The shipped manifest is what tools/build_data_manifest.py makes of the data root, and names both releases at their commits."
    assert set(M['releases']) == {'culturellm', 'global-gallery'}
    assert M['releases']['culturellm']['repo'] == 'Scarelette/CultureLLM' and M['releases']['culturellm']['commit'] == 'dcdb64d'
    assert GG['repo'] == 'iamshnoo/culture-llm' and GG['commit'] == '3ec2d5e'
    assert F.build_manifest(data_root)['releases'] == M['releases']
    r = subprocess.run([sys.executable, 'tools/build_data_manifest.py', '--root', str(data_root), '--check'], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_verify_the_study_data_root(data_root):
    "`culturellm data verify` on the study's data root: exit 0 and one line (the real command, in a process of its own)."
    r = subprocess.run([sys.executable, '-c', 'import sys; from culturellm.fetch import main; sys.exit(main())', 'data', 'verify', str(data_root)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    n = sum(len(r['files']) for r in M['releases'].values())
    assert r.stdout.strip().splitlines() == [f"data root {data_root}: all {n} files match the manifest "
                                             f"(culturellm Scarelette/CultureLLM@dcdb64d, global-gallery iamshnoo/culture-llm@3ec2d5e)"]


def test_fetch_both_releases_then_verify(tmp_path, server, archives, data_root, capsys):
    "A complete fetch gives the data root's layout and files, exactly; a rerun downloads nothing; lost or changed files come back from the cache."
    for name, rel in M['releases'].items(): server.routes[url_path(rel)] = archives[name]
    dest, cache = tmp_path / 'data', tmp_path / 'cache'
    t = time.time()
    rc, out, err = cli(capsys, 'fetch', '--dest', dest, '--mirror', server.url, '--cache', cache)
    assert rc == 0, err
    secs = time.time() - t
    assert sorted(server.hits) == sorted(url_path(r) for r in M['releases'].values())
    want = sorted(f"{n}/{rp}" for n, r in M['releases'].items() for rp in r['files'])
    assert files_under(dest) == want                             # only the study's files: no README, no script, no temporaries
    for p in want: assert (dest / p).read_bytes() == (data_root / p).read_bytes()
    rc, out2, _ = cli(capsys, 'verify', dest)
    assert rc == 0 and out2.strip() == f"data root {dest}: all {len(want)} files match the manifest " \
        "(culturellm Scarelette/CultureLLM@dcdb64d, global-gallery iamshnoo/culture-llm@3ec2d5e)"
    assert f"all {len(want)} files verified ({len(want)} written now)" in out
    print(f"fetch of both releases: {secs:.1f} s")

    rc, out, _ = cli(capsys, 'fetch', '--dest', dest, '--mirror', server.url, '--cache', tmp_path / 'empty-cache')
    assert rc == 0 and len(server.hits) == 2 and '(0 written now)' in out   # everything verified: nothing downloaded

    (dest / 'culturellm' / 'WVQ.jsonl').unlink()
    (dest / 'global-gallery' / 'camel' / 'prompts.json').write_text('{}')
    rc, out, _ = cli(capsys, 'fetch', '--dest', dest, '--mirror', server.url, '--cache', cache)
    assert rc == 0 and len(server.hits) == 2 and '(2 written now)' in out   # from the cached archives
    assert cli(capsys, 'verify', dest)[0] == 0


@pytest.fixture(scope='session')
def corrupted(data_root):
    "The Global Gallery archive with one byte of geomlama/en.csv changed."
    return build_archive(data_root, SMALL, GG, flip='geomlama/en.csv')


def test_a_corrupted_file_fails_the_fetch_and_is_not_written(tmp_path, server, archives, corrupted, capsys):
    server.routes[url_path(GG)] = corrupted
    dest, cache = tmp_path / 'data', tmp_path / 'cache'
    rc, _, err = cli(capsys, 'fetch', '--only', SMALL, '--dest', dest, '--mirror', server.url, '--cache', cache)
    assert rc == 2
    one_line_error(err, 'global-gallery/geomlama/en.csv', server.url + url_path(GG), 'sha256', 'expected')
    assert not (dest / SMALL / 'geomlama' / 'en.csv').exists()
    assert not [p for p in dest.rglob('.*') if p.is_file()]              # no temporary left behind
    assert F.verify_root(dest, M, SMALL)[0] == [('global-gallery/geomlama/en.csv', 'missing')]   # the rest verified
    assert not list(cache.glob('*.tar.gz'))                              # the bad archive is not kept
    server.routes[url_path(GG)] = archives[SMALL]                        # the mirror is fixed: a rerun completes
    assert cli(capsys, 'fetch', '--only', SMALL, '--dest', dest, '--mirror', server.url, '--cache', cache)[0] == 0
    assert cli(capsys, 'verify', '--only', SMALL, dest)[0] == 0


def test_an_interrupted_download_is_retried(tmp_path, server, archives, capsys):
    "The server drops the connection halfway through the first download; pooch's retry gets the whole archive."
    server.routes[url_path(GG)] = archives[SMALL]; server.cut.add(url_path(GG))
    dest = tmp_path / 'data'
    rc, out, err = cli(capsys, 'fetch', '--only', SMALL, '--dest', dest, '--mirror', server.url, '--cache', tmp_path / 'cache')
    assert rc == 0, err
    assert server.hits == [url_path(GG)] * 2
    assert cli(capsys, 'verify', '--only', SMALL, dest)[0] == 0


def test_an_interrupted_fetch_leaves_nothing_and_a_rerun_completes(tmp_path, server, archives, capsys):
    "Without retries the cut-off download fails in one line, leaving no file in the data root and none in the cache; the next fetch completes."
    server.routes[url_path(GG)] = archives[SMALL]; server.cut.add(url_path(GG))
    dest, cache = tmp_path / 'data', tmp_path / 'cache'
    rc, _, err = cli(capsys, 'fetch', '--only', SMALL, '--dest', dest, '--mirror', server.url, '--cache', cache, '--retries', '0')
    assert rc == 2
    one_line_error(err, server.url + url_path(GG), 'the connection closed before the whole archive came')
    assert files_under(dest) == [] and files_under(cache) == []
    rc, _, err = cli(capsys, 'fetch', '--only', SMALL, '--dest', dest, '--mirror', server.url, '--cache', cache, '--retries', '0')
    assert rc == 0, err
    assert cli(capsys, 'verify', '--only', SMALL, dest)[0] == 0


def test_verify_names_changed_and_missing_files(tmp_path, data_root, capsys):
    root = tmp_path / 'root'; shutil.copytree(data_root / SMALL, root / SMALL)
    assert cli(capsys, 'verify', '--only', SMALL, root)[0] == 0
    p = root / SMALL / 'camel' / 'prompts.json'
    b = bytearray(p.read_bytes()); b[10] ^= 1; p.write_bytes(bytes(b))          # one byte flipped
    rc, out, err = cli(capsys, 'verify', '--only', SMALL, root)
    assert rc == 1
    assert out.strip().splitlines() == [f"global-gallery/camel/prompts.json: changed: sha256 {F.sha256_file(p)[:16]}..., "
                                        f"expected {GG['files']['camel/prompts.json']['sha256'][:16]}..."]
    one_line_error(err, f'data root {root}: 1 of 8 files missing or changed')
    (root / SMALL / 'geomlama' / 'sw.csv').unlink()
    rc, out, err = cli(capsys, 'verify', root)                                   # both releases: culturellm is all missing
    assert rc == 1
    lines = out.strip().splitlines()
    assert 'global-gallery/camel/prompts.json: changed: sha256' in out and 'global-gallery/geomlama/sw.csv: missing' in lines
    assert 'culturellm/WVQ.jsonl: missing' in lines and len(lines) == len(M['releases']['culturellm']['files']) + 2


def _closed_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def test_failures_are_one_line_errors(tmp_path, server, capsys):
    "A network failure, a 404, an archive that is not one, a destination that is a file or cannot be written: one line each, exit 2."
    base = ['fetch', '--only', SMALL, '--cache', tmp_path / 'cache', '--retries', '0']
    down = f"http://127.0.0.1:{_closed_port()}"
    rc, _, err = cli(capsys, *base, '--dest', tmp_path / 'a', '--mirror', down)
    assert rc == 2; one_line_error(err, down + url_path(GG), 'connection failed')

    rc, _, err = cli(capsys, *base, '--dest', tmp_path / 'b', '--mirror', server.url + '/no/such/mirror', '--retries', '3')
    assert rc == 2 and server.hits == ['/no/such/mirror' + url_path(GG)]         # a 404 is not retried
    one_line_error(err, server.url + '/no/such/mirror' + url_path(GG), 'HTTP 404')

    server.routes[url_path(GG)] = b'<html>this is not the archive</html>'
    rc, _, err = cli(capsys, *base, '--dest', tmp_path / 'c', '--mirror', server.url)
    assert rc == 2; one_line_error(err, server.url + url_path(GG), 'not a readable tar.gz')
    assert files_under(tmp_path / 'c') == [] and not list((tmp_path / 'cache').glob('*.tar.gz'))

    (tmp_path / 'file').write_text('x')
    rc, _, err = cli(capsys, *base, '--dest', tmp_path / 'file', '--mirror', server.url)
    assert rc == 2; one_line_error(err, f"destination {tmp_path / 'file'}: is a file, expected a folder")

    rc, _, err = cli(capsys, *base, '--dest', tmp_path / 'd', '--mirror', 'github.com')
    assert rc == 2; one_line_error(err, "--mirror 'github.com': expected an http(s) URL")

    rc, _, err = cli(capsys, 'verify', tmp_path / 'nowhere')
    assert rc == 2; one_line_error(err, f"data root {tmp_path / 'nowhere'}: not a folder")


def test_an_unwritable_destination_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    ro = tmp_path / 'ro'; ro.mkdir(); ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):   # root writes anyway: make the write itself fail as it would
            def refuse(*a, dir=None, **k): raise PermissionError(13, 'Permission denied', str(dir))
            monkeypatch.setattr(F.tempfile, 'mkstemp', refuse)
        rc, _, err = cli(capsys, 'fetch', '--only', SMALL, '--dest', ro / 'data', '--mirror', 'http://127.0.0.1:9', '--retries', '0')
        assert rc == 2; one_line_error(err, f"destination {ro / 'data'}: cannot be written", 'expected a writable folder')
    finally: ro.chmod(0o700)


def test_the_culturellm_command_has_data():
    "Once 09_run wires `add_data_parser`, `culturellm data ...` is this command."
    from culturellm import run
    p = run._parser()
    sub = next(a for a in p._actions if a.__class__.__name__ == '_SubParsersAction')
    if 'data' not in sub.choices: pytest.skip('culturellm.run does not wire `data` yet (09_run: add_data_parser)')
    r = subprocess.run([sys.executable, '-c', 'import sys; from culturellm.run import main; sys.exit(main())', 'data', 'verify', '/nonexistent/x'],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == 'culturellm: error: data root /nonexistent/x: not a folder (expected the folder holding culturellm/ and global-gallery/)'
