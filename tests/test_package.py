"""The package's import contract: ``import autojudge_eval`` loads nothing heavy and changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = ("torch", "lm_eval", "transformers", "datasets", "numpy", "sklearn", "pandas")


def test_importing_the_package_imports_nothing_heavy_and_sets_no_environment():
    probe = (
        "import json, os, sys; before = dict(os.environ); import autojudge_eval; "
        f"print(json.dumps({{'loaded': [m for m in {HEAVY!r} if m in sys.modules], "
        "'env': sorted(set(os.environ.items()) ^ set(before.items()))}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"loaded": [], "env": []}
