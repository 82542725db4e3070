"""Regenerate the data shipped inside the package (culturellm/data/wvs_questions.json, wvs_counts.json)
from the original CultureLLM release's files.

    python tools/build_embedded.py [DATA_ROOT]

DATA_ROOT holds culturellm/ (the release's data/ folder); default $CULTURELLM_DATA, else ../shared/data.
Rerunning it on the same data gives byte-identical files; tests/test_seeds.py checks the shipped files
against the microdata.
"""
import os, sys, time
from pathlib import Path

from culturellm.seeds import build_embedded

root = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get('CULTURELLM_DATA', Path(__file__).resolve().parents[1] / '../shared/data'))
t = time.time()
cc = build_embedded(root, Path(__file__).resolve().parents[1] / 'culturellm' / 'data')
print(f"wrote the questions and the counts of {len(cc)} countries ({sum(v.n for v in cc.values())} respondents) in {time.time() - t:.1f}s")
