"""Write the data manifest the package ships (culturellm/data/data_manifest.json) from a data root known to be good.

For each release (`culturellm.fetch.SOURCES`: its repository, commit and folder inside the repository) the manifest
records every file of the release's folder under the data root: its path, size and SHA-256. `culturellm data fetch`
extracts exactly those files and checks each; `culturellm data verify DIR` checks a data root against them.

    python tools/build_data_manifest.py [--root DIR]            # (re)write the manifest; default root $CULTURELLM_DATA, else ../shared/data
    python tools/build_data_manifest.py [--root DIR] --check    # change nothing; exit 1 if the shipped manifest differs
"""
from __future__ import annotations

import argparse, json, os, sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from culturellm.fetch import build_manifest, MANIFEST_FILE   # noqa: E402
from culturellm.config import ConfigError, atomic_write_text   # noqa: E402

OUT = REPO / 'culturellm' / MANIFEST_FILE


def default_root() -> Path:
    env = os.environ.get('CULTURELLM_DATA')
    return Path(env).expanduser() if env else REPO.parent / 'shared' / 'data'


def render(root: Path) -> str:
    "The manifest of `root` as the file's text (stable: sorted paths, one entry a line per file)."
    m = build_manifest(root)
    m['note'] = ("per release: the repository, the commit and the folder inside it; per file (path relative to the release's "
                 "folder under the data root, and under that folder in the archive): size in bytes and SHA-256. "
                 "Written by tools/build_data_manifest.py")
    return json.dumps(m, indent=1, ensure_ascii=False) + '\n'


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--root', type=Path, default=None, help='the data root (default: $CULTURELLM_DATA, else ../shared/data)')
    ap.add_argument('--out', type=Path, default=OUT, help=f'default: {OUT.relative_to(REPO)}')
    ap.add_argument('--check', action='store_true', help='change nothing; exit 1 if the manifest at --out differs')
    a = ap.parse_args(argv)
    root = a.root or default_root()
    try: text = render(root)
    except ConfigError as e: print(f'build_data_manifest: error: {e}', file=sys.stderr); return 2
    m = json.loads(text)
    summary = ', '.join(f"{n} {r['repo']}@{r['commit']}: {len(r['files'])} files, {sum(f['size'] for f in r['files'].values()) / 1e6:.1f} MB"
                        for n, r in m['releases'].items())
    if a.check:
        old = a.out.read_text() if a.out.exists() else ''
        if old != text:
            print(f'FAIL: {a.out} does not match {root} ({summary}): run python tools/build_data_manifest.py', file=sys.stderr); return 1
        print(f'ok: {a.out} matches {root} ({summary})'); return 0
    atomic_write_text(a.out, text)
    print(f'wrote {a.out} from {root} ({summary})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
