"""The README's Python API: the notebook-style example runs, and the API's docstring examples hold."""
import doctest
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import zoo_env

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_example_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "quickstart.py"), str(tmp_path)],
                          capture_output=True, text=True, env=zoo_env(), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.Size([5, 2])" in proc.stdout
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert len(list((tmp_path / "runs" / "gmm-moons").glob("version_*"))) == 1


@pytest.mark.parametrize("module", ["zoo_core.api"])
def test_docstring_examples(module):
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0, result
