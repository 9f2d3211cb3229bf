"""`zoo new family NAME`: the generated plugin installs, passes its own tests and trains, unedited."""
import re
import sys

import pytest

from isolated import explain, run, venv_with


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaffold")
    proc = run([sys.executable, "-m", "zoo_core", "new", "family", "toy_density", "--dir", root], cwd=root)
    assert proc.returncode == 0, explain(proc)
    package = root / "zoo-toy_density"
    python = venv_with(package, root)
    work = root / "work"
    work.mkdir()
    return {"package": package, "python": python, "work": work}


def test_generated_package_layout(generated):
    names = {p.relative_to(generated["package"]).as_posix() for p in generated["package"].rglob("*") if p.is_file()}
    assert {"pyproject.toml", "README.md", "zoo_toy_density/__init__.py", "zoo_toy_density/model.py",
            "tests/test_conformance.py"} <= names
    assert 'toy_density = "zoo_toy_density"' in (generated["package"] / "pyproject.toml").read_text()


def test_generated_plugin_passes_its_own_tests(generated):
    proc = run([generated["python"], "-m", "pytest", generated["package"] / "tests", "-q", "-p", "no:cacheprovider"],
               cwd=generated["work"])
    assert proc.returncode == 0, explain(proc)
    # the checks that do not apply to a diagonal Gaussian on moons (bounds, conditioning) are reported as skipped
    assert re.search(r"\b17 passed, 5 skipped\b", proc.stdout), proc.stdout[-2000:]


def test_generated_family_is_listed_and_trains(generated):
    proc = run([generated["python"], "-m", "zoo_core", "list"], cwd=generated["work"])
    assert proc.returncode == 0, explain(proc)
    assert re.search(r"^\s+toy_density\s+likelihood=exact", proc.stdout, re.M), proc.stdout
    runs = generated["work"] / "runs"
    proc = run([generated["python"], "-m", "zoo_core", "train", "toy_density-moons", "--max-steps", "5",
                "--runs-dir", runs, "--no-progress", "--accelerator", "cpu"], cwd=generated["work"])
    assert proc.returncode == 0, explain(proc)
    assert (runs / "toy_density-moons" / "version_0" / "metrics.json").is_file()


@pytest.mark.parametrize("name, message", [
    ("My-Flow", "must be lower case letters"),
    ("gmm", "already registered"),
])
def test_bad_names_are_refused(tmp_path, capsys, name, message):
    from zoo_core.cli import main

    assert main(["new", "family", name, "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_existing_directory_is_not_overwritten(tmp_path, capsys):
    from zoo_core.cli import main

    (tmp_path / "zoo-fresh").mkdir()
    (tmp_path / "zoo-fresh" / "keep.txt").write_text("mine")
    assert main(["new", "family", "fresh", "--dir", str(tmp_path)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "zoo-fresh" / "keep.txt").read_text() == "mine"
