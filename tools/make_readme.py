"""Write README.md from nbs/index.ipynb (the docs home page), or with --check fail if it is out of date.

nbdev_readme does this through Quarto, which is not installable from the package registries here; this
script keeps the same contract: the notebook is the source, README.md is generated.
"""
import re, sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
HEADER = "<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->\n\n"


def render(nb_path: Path = REPO / 'nbs' / 'index.ipynb') -> str:
    "Markdown cells verbatim (image paths made relative to the repo root); code cells not marked hide as code blocks."
    nb = nbformat.read(nb_path, as_version=4)
    parts = []
    for c in nb.cells:
        src = c.source.strip()
        if not src: continue
        if c.cell_type == 'markdown':
            parts.append(re.sub(r'\]\((?!https?:|/|#)([^)]+)\)', lambda m: f"](nbs/{m.group(1)})" if (REPO / 'nbs' / m.group(1)).exists() else m.group(0), src))
        elif c.cell_type == 'code' and not re.search(r'^#\|\s*(hide|default_exp|export)', src, re.M):
            parts.append("```python\n" + src + "\n```")
    return HEADER + "\n\n".join(parts) + "\n"


if __name__ == '__main__':
    text, readme = render(), REPO / 'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            sys.exit("FAIL: README.md is out of date with nbs/index.ipynb; run: python tools/make_readme.py")
    else:
        readme.write_text(text); print(f"wrote {readme}")
