"""Hardening, as a user meets it: every bad input is one line naming it (``zoo: error: ...``) with a
non-zero exit, never "internal error"; every success writes only inside the runs directory or the
``-o`` path. Each test fails without the fix it names (zoo_core/plugins.py name_problem,
checkpoint_io.write_atomic, the SIGTERM handler and run lock in runner/train.py, the --check gate,
``zoo list`` marks, hook validation, the not-installed message, YAML limits, the size caps in
registry.py and the meta-device checks of checkpoint.py / export_reader.py).

Trainings are tiny (2 steps, gmm-moons on 600 points, eval.metrics=[nll]); the few subprocesses are
there for signals, a closed pipe and peak-memory measurements.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, run_zoo, zoo_env
from zoo_core import cli
from zoo_core.hookspecs import hookimpl
from zoo_core.zoo import Zoo

SMALL_DATA = ["--set", "data.n_train=600", "--set", "data.n_val=200", "--set", "data.n_test=200"]
TINY = ["--max-steps", "2", "--set", "train.limit_train_batches=2", "--set", "eval.metrics=[nll]", *SMALL_DATA,
        "--no-progress", "--accelerator", "cpu"]
GIB = 1 << 30


# ---- helpers -------------------------------------------------------------------------------------
class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli_run(capsys):
    """``zoo ARGS`` in this process; ``zoo=`` passes a Zoo (plugins injected by the test)."""
    def run(*args, zoo=None):
        capsys.readouterr()
        try:
            code = cli.main([str(a) for a in args], zoo=zoo)
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def assert_user_error(result, *fragments, code=None):
    """A non-zero exit and exactly one line on stderr, ``zoo: error: ...`` (argparse: ``zoo CMD: error:``),
    containing ``fragments``, never an internal error or a traceback."""
    err = result.stderr.strip()
    assert result.returncode != 0 if code is None else result.returncode == code, (result.returncode, err)
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got:\n{err}"
    assert err.startswith("zoo") and ": error: " in err, err
    assert "internal error" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in: {err}"
    return err


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def run_measured(*args, env=None, timeout=300) -> tuple[subprocess.CompletedProcess, int]:
    """``python -m zoo_core ARGS`` in a fresh wrapper process, whose RUSAGE_CHILDREN peak RSS is the
    zoo process's alone. Returns (the zoo process's result, its peak RSS in bytes)."""
    wrapper = textwrap.dedent("""
        import json, resource, subprocess, sys
        r = subprocess.run([sys.executable, "-m", "zoo_core", *sys.argv[1:]], capture_output=True, text=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kilobytes on Linux
        print(json.dumps({"rc": r.returncode, "out": r.stdout, "err": r.stderr, "peak": peak}))
    """)
    proc = subprocess.run([sys.executable, "-c", wrapper, *map(str, args)], capture_output=True, text=True,
                          env=env or zoo_env(), timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return subprocess.CompletedProcess(args, data["rc"], data["out"], data["err"]), data["peak"]


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    """Each test runs in an empty working directory, checked by the tests that write nothing there."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny gmm-moons run: its run directory (tests copy what they change)."""
    runs = tmp_path_factory.mktemp("runs")
    code = cli.main(["train", "gmm-moons", "--runs-dir", str(runs), *TINY])
    assert code == 0
    return runs / "gmm-moons" / "version_0"


def write_registry(path: Path, entries: dict) -> Path:
    path.write_text(yaml.safe_dump(entries, sort_keys=False, allow_unicode=True))
    return path


TINY_ENTRY = {"family": "gmm", "data": {"name": "moons", "n_train": 600, "n_val": 200, "n_test": 200},
              "model": {"n_components": 4}, "train": {"max_epochs": 1, "limit_train_batches": 2},
              "eval": {"metrics": ["nll"]}}


# ---- 1. entry names are identifiers ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["../escaped", "/tmp/x", "sub/dir", ".", "two\nlines", "evil\u202etxt.exe"])
def test_entry_names_that_could_leave_the_runs_dir_are_refused(cli_run, tmp_path, _cwd, name):
    registry = write_registry(tmp_path / "mine.yaml", {name: TINY_ENTRY})
    runs = tmp_path / "runs"
    for args in (("train", name, "--registry", registry, "--runs-dir", runs, *TINY), ("list", "--registry", registry)):
        err = assert_user_error(cli_run(*args), str(registry), "entry name must be")
        assert "\n" not in err and "\u202e" not in err  # shown escaped
    assert not runs.exists() and tree(_cwd) == set() and tree(tmp_path) == {"mine.yaml", "cwd"}


def test_plugin_entry_with_a_path_name_is_a_plugin_problem(cli_run):
    def register_entries(register):
        register("../escaped", dict(TINY_ENTRY))

    zoo = Zoo(extra_plugins={"pathy": _module("pathy", register_entries=hookimpl(register_entries))})
    assert "../escaped" not in zoo.registry.names()
    result = cli_run("plugins", zoo=zoo)
    assert "problem" in _plugin_line(result.stdout, "pathy") and "entry name must be" in result.stdout


# ---- 2. write_atomic never follows a planted link; -o writes exactly its path ------------------------
def test_write_atomic_never_follows_planted_links(tmp_path):
    from zoo_core.checkpoint_io import write_atomic

    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    pid = os.getpid()
    for name in (f".metrics.json.tmp-{pid}", ".metrics.json.tmp", "metrics.json.tmp", f"metrics.json.tmp-{pid}",
                 f".config.yaml.tmp-{pid}"):
        (run / name).symlink_to(victim)
    write_atomic(run / "metrics.json", '{"ok": true}')
    write_atomic(run / "config.yaml", "a: 1\n")
    assert victim.read_text() == "precious"
    assert json.loads((run / "metrics.json").read_text()) == {"ok": True}
    assert not (run / "metrics.json").is_symlink()
    # the target itself a link: replaced, not written through
    (run / "samples.png").symlink_to(victim)
    write_atomic(run / "samples.png", b"png")
    assert victim.read_text() == "precious" and not (run / "samples.png").is_symlink()


def test_sample_writes_exactly_the_o_path(cli_run, trained, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / f".x.NPY.tmp-{os.getpid()}").symlink_to(victim)
    result = cli_run("sample", trained, "-n", 8, "-o", out / "x.NPY")
    assert result.returncode == 0, result.stderr
    assert tree(out) == {"x.NPY", f".x.NPY.tmp-{os.getpid()}"} and victim.read_text() == "precious"
    import numpy as np

    assert np.load(out / "x.NPY").shape == (8, 2)


def test_sample_o_a_directory_or_under_a_file_is_one_line(cli_run, trained, tmp_path):
    (tmp_path / "d.npy").mkdir()
    (tmp_path / "afile").write_text("x")
    assert_user_error(cli_run("sample", trained, "-o", tmp_path / "d.npy"), "is a directory")
    assert_user_error(cli_run("sample", trained, "-o", tmp_path), "-o")
    assert_user_error(cli_run("sample", trained, "-o", tmp_path / "afile" / "x.npy"), "is a file, not a directory")
    assert (tmp_path / "afile").read_text() == "x" and tree(tmp_path / "d.npy") == set()


# ---- 3. signals ----------------------------------------------------------------------------------------
def _start_long_training(runs: Path) -> tuple[subprocess.Popen, Path]:
    # gradient fit (EM would converge in a few epochs): a run long enough to be interrupted
    proc = subprocess.Popen([sys.executable, "-m", "zoo_core", "train", "gmm-moons", "--max-epochs", "200",
                             "--runs-dir", str(runs), "--no-progress", "--accelerator", "cpu",
                             "--set", "eval.metrics=[nll]", "--set", "model.fit=gradient",
                             "--set", "train.batch_size=100", *SMALL_DATA],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=zoo_env(),
                            # as from a terminal: a suite started in the background (`cmd &` in a
                            # script) passes SIGINT on as ignored, and Ctrl-C would then do nothing
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = runs / "gmm-moons" / "version_0" / "checkpoints" / "last.ckpt"
    for _ in range(6000):  # a hang guard, not a timing assertion
        if last.is_file() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert last.is_file(), proc.communicate()[1][-3000:]
    return proc, last.parent.parent


def test_sigterm_exits_143_with_a_resume_command_that_completes(cli_run, tmp_path):
    runs = tmp_path / "runs"
    proc, run_dir = _start_long_training(runs)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert f"--resume {run_dir}" in err and "zoo: error: training stopped by SIGTERM" in err, err[-3000:]
    command = err[err.index("(zoo train ") + 1:].split(")")[0].split()
    assert command[:4] == ["zoo", "train", "gmm-moons", "--resume"]
    result = cli_run(*command[1:], "--no-progress", "--accelerator", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 200 and (run_dir / "logs-resume1").is_dir()


def test_sigint_exits_130_interrupted(tmp_path):
    proc, _ = _start_long_training(tmp_path / "runs")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == "zoo: interrupted" and "Traceback" not in err, err[-3000:]


# ---- 4. --check ------------------------------------------------------------------------------------------
def _entry_with(value: float) -> dict:
    return {**TINY_ENTRY, "expected": [{"metric": "test.nll_nats", "value": value, "direction": "at_most",
                                        "kind": "target", "source": "hardening test"}]}


def test_check_exits_3_only_when_an_expectation_fails(cli_run, tmp_path, _cwd):
    registry = write_registry(tmp_path / "mine.yaml", {"tiny-impossible": _entry_with(-100.0),
                                                       "tiny-easy": _entry_with(100.0)})
    runs = tmp_path / "runs"
    common = ("--registry", registry, "--runs-dir", runs, "--no-progress", "--accelerator", "cpu", "--check")
    failed = cli_run("train", "tiny-impossible", *common)
    assert failed.returncode == 3, failed.stderr[-2000:]
    assert "zoo: check failed: 1 expectation(s) not met: test.nll_nats (target)" in failed.stderr
    assert "internal error" not in failed.stderr
    passed = cli_run("train", "tiny-easy", *common)
    assert passed.returncode == 0, passed.stderr[-2000:]
    # trained with overrides: not comparable, neither pass nor fail, so --check does not fail
    overridden = cli_run("train", "tiny-impossible", *common, "--max-epochs", "2", "--set", "optim.lr=0.02")
    assert overridden.returncode == 0, overridden.stderr[-2000:]
    rows = json.loads(Path(overridden.stdout.split("run: ")[1].split()[0], "metrics.json").read_text())["expected"]
    assert [r["status"] for r in rows] == ["not comparable"] and rows[0]["passed"] is None
    assert "optim.lr" in rows[0]["note"] and "train.max_epochs" in rows[0]["note"]
    assert tree(_cwd) == set()


# ---- 5. zoo list marks entries that cannot run ----------------------------------------------------------
def test_list_marks_unknown_names_with_did_you_mean(cli_run, tmp_path):
    registry = write_registry(tmp_path / "mine.yaml", {
        "typo-family": {**TINY_ENTRY, "family": "gmn"},
        "typo-data": {**TINY_ENTRY, "data": {"name": "moon"}},
        "typo-metric": {**TINY_ENTRY, "expected": [{"metric": "test.nll", "value": 1.0, "source": "x"}]},
        "fine": TINY_ENTRY,
    })
    result = cli_run("list", "--registry", registry)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:] if line.startswith("  ")}
    assert "! unknown family 'gmn'" in lines["typo-family"] and "did you mean 'gmm'" in lines["typo-family"]
    assert "! unknown dataset 'moon'" in lines["typo-data"] and "did you mean 'moons'" in lines["typo-data"]
    assert "no metric writes 'nll'" in lines["typo-metric"] and "'nll_nats'" in lines["typo-metric"]
    assert "!" not in lines["fine"] and "!" not in lines["gmm-moons"]
    assert "3 entries are marked '!'" in result.stderr


# ---- 6. hooks are validated --------------------------------------------------------------------------------
def _module(name, **attrs):
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def _plugin_line(stdout: str, name: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(name + " "))


def test_bad_hooks_show_as_problems_in_zoo_plugins(cli_run):
    def register_family(register):  # misspelt (no 's')
        pass

    def register_families(register):  # not marked @hookimpl
        pass

    def register_datasets(register):
        register("notdata", dict)

    def returns_instead(register):
        from zoo_gmm import GMM

        return GMM

    zoo = Zoo(extra_plugins={
        "misspelt": _module("misspelt", register_family=hookimpl(register_family)),
        "unmarked": _module("unmarked", register_families=register_families),
        "baddata": _module("baddata", register_datasets=hookimpl(register_datasets)),
        "returner": _module("returner", register_families=hookimpl(returns_instead)),
    })
    result = cli_run("plugins", zoo=zoo)
    assert result.returncode == 0, result.stderr
    expected = {"misspelt": "did you mean 'register_families'", "unmarked": "is not marked @hookimpl",
                "baddata": "is not a ZooDataModule subclass", "returner": "instead of calling register"}
    for name, problem in expected.items():
        line = _plugin_line(result.stdout, name)
        assert " problem " in line, line
        block = result.stdout.split(line, 1)[1].split("\n")[1]
        assert block.strip().startswith("problem:") and problem in block, (name, block)
    assert "notdata" not in zoo.plugins.datasets and "gmm" in zoo.plugins.families


# ---- 7. a family that is no longer installed: one message everywhere ----------------------------------
def _tiny_family_plugin():
    from zoo_gmm.model import GMM

    class TinyGMM(GMM):
        family = "tinygmm"

    def register_families(register):
        register(TinyGMM)

    return _module("tinyplug", register_families=hookimpl(register_families))


def test_family_not_installed_same_message_for_eval_sample_export(cli_run, tmp_path):
    zoo = Zoo(extra_plugins={"tinyplug": _tiny_family_plugin()})
    info = zoo.plugins.plugins["tinyplug"]
    info.distribution, info.version = "zoo-tiny", "0.3.0"  # as if pip-installed
    registry = write_registry(tmp_path / "mine.yaml", {"tiny-fam": {**TINY_ENTRY, "family": "tinygmm"}})
    runs = tmp_path / "runs"
    trained = cli_run("train", "tiny-fam", "--registry", registry, "--runs-dir", runs, "--no-progress",
                      "--accelerator", "cpu", zoo=zoo)
    assert trained.returncode == 0, trained.stderr[-2000:]
    run_dir = runs / "tiny-fam" / "version_0"
    assert cli_run("export", run_dir, "-o", tmp_path / "exp", zoo=zoo).returncode == 0
    message = "family 'tinygmm' is not installed; it was provided by plugin 'tinyplug' (distribution zoo-tiny 0.3.0)"
    without = Zoo()  # the plugin uninstalled
    for args in (("eval", run_dir), ("sample", run_dir, "-o", tmp_path / "s.npy"), ("export", run_dir, "-o",
                 tmp_path / "exp2"), ("eval", tmp_path / "exp"), ("sample", tmp_path / "exp", "-o", tmp_path / "t.npy"),
                 ("eval", run_dir / "checkpoints" / "last.ckpt")):
        assert_user_error(cli_run(*args, "--registry", registry, zoo=without) if args[0] == "eval"
                          else cli_run(*args, zoo=without), message)
    assert not (tmp_path / "exp2").exists() and not (tmp_path / "s.npy").exists()


# ---- 8. --resume refusals leave the run as it was; failed starts leave nothing ---------------------------
def _copy_run(trained: Path, tmp_path: Path) -> Path:
    import shutil

    run_dir = tmp_path / "runs" / "gmm-moons" / "version_0"
    shutil.copytree(trained, run_dir)
    (run_dir / ".zoo-train.lock").unlink(missing_ok=True)
    return run_dir


def test_resume_with_other_model_settings_changes_nothing(cli_run, trained, tmp_path):
    run_dir = _copy_run(trained, tmp_path)
    before = {p: (run_dir / p).read_bytes() for p in ("config.yaml", "metrics.json", "checkpoints/last.ckpt")}
    listing = tree(run_dir)
    result = cli_run("train", "gmm-moons", "--resume", run_dir, "--set", "model.n_components=3", "--no-progress",
                     "--accelerator", "cpu")
    assert_user_error(result, "model.n_components", "start a new run")
    assert {p: (run_dir / p).read_bytes() for p in before} == before
    assert tree(run_dir) == listing  # no logs-resume1, no lock, no temporaries


def test_second_concurrent_resume_is_refused(cli_run, trained, tmp_path):
    run_dir = _copy_run(trained, tmp_path)
    config = (run_dir / "config.yaml").read_bytes()
    # the first --resume holds the run's lock (as runner/train.py _run_lock does) while it trains
    fd = os.open(run_dir / ".zoo-train.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = cli_run("train", "gmm-moons", "--resume", run_dir, "--max-epochs", "3", "--no-progress",
                         "--accelerator", "cpu")
    finally:
        os.close(fd)
    assert_user_error(result, str(run_dir), "is being trained by another process")
    assert (run_dir / "config.yaml").read_bytes() == config and not (run_dir / "logs-resume1").exists()


@pytest.mark.parametrize("bad", [["--set", "train.limit_train_batches=1e-9"],  # refused by Lightning in fit
                                 ["--set", "model.covariance=fulll"]])  # refused by the family
def test_a_start_that_fails_before_its_first_step_leaves_no_run_dir(cli_run, tmp_path, bad):
    runs = tmp_path / "runs"
    result = cli_run("train", "gmm-moons", "--runs-dir", runs, *TINY, *bad)  # the later --set wins
    assert_user_error(result, bad[1].split("=")[0].split(".")[-1])
    assert list(runs.glob("gmm-moons/version_*")) == []


# ---- 9. YAML limits --------------------------------------------------------------------------------------
BILLION_LAUGHS = textwrap.dedent("""\
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    """)


def test_billion_laughs_registry_is_refused_in_bounded_memory(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)
    result, peak = run_measured("list", "--registry", bomb)
    err = assert_user_error(result, str(bomb), "nodes")
    assert len(err) < 500, err
    assert peak < GIB, f"peak RSS {peak / 2**20:.0f} MiB"


def test_binary_latin1_and_deep_registry_files_are_one_line(cli_run, tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("caf\u00e9:\n  family: gmm\n".encode("latin-1"))
    deep = tmp_path / "deep.yaml"
    deep.write_text("x: " + "[" * 10000 + "]" * 10000 + "\n")
    assert_user_error(cli_run("list", "--registry", binary), str(binary))
    assert_user_error(cli_run("list", "--registry", latin), str(latin), "not a UTF-8 text file")
    err = assert_user_error(cli_run("list", "--registry", deep), str(deep))
    assert len(err) < 500


# ---- 10. user errors are never "internal error" -------------------------------------------------------
@pytest.mark.parametrize("extra", [
    ["--seed", "-1"], ["--seed", "4294967296"],
    ["--set", "optim.lr=1e300"], ["--set", "data.n_train=.nan"], ["--set", "train.limit_train_batches=1e-9"],
    ["--devices", "0"], ["--devices", "1000"], ["--accelerator", "foo"], ["--strategy", "foo"],
], ids=lambda e: " ".join(e))
def test_user_errors_are_one_line_not_internal(cli_run, tmp_path, _cwd, extra):
    runs = tmp_path / "runs"
    args = [a for a in TINY if a not in ("--accelerator", "cpu")] if "--accelerator" in extra else TINY
    result = cli_run("train", "gmm-moons", "--runs-dir", runs, *args, *extra)
    assert_user_error(result, extra[0].lstrip("-") if extra[0] != "--set" else extra[1].split("=")[0].split(".")[-1])
    assert tree(_cwd) == set() and not list(runs.glob("gmm-moons/version_*"))


def test_resume_below_the_epochs_done_is_one_line(cli_run, tmp_path):
    runs = tmp_path / "runs"
    args = [a for a in TINY if a not in ("--max-steps", "2")]
    assert cli_run("train", "gmm-moons", "--runs-dir", runs, *args, "--max-epochs", "3").returncode == 0
    result = cli_run("train", "gmm-moons", "--runs-dir", runs, "--resume", "--max-epochs", "1", "--no-progress",
                     "--accelerator", "cpu")
    assert_user_error(result, "train.max_epochs=1", "--max-epochs")


def test_list_into_a_closed_pipe_exits_0_silently(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "zoo_core", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=zoo_env(), cwd=tmp_path)
    proc.stdout.close()  # the reader (head -1) has gone before the zoo writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err
    assert err == "", err


# ---- 11. bounded memory from untrusted exports and checkpoints; size caps --------------------------------
def _resign(export_dir: Path) -> None:
    from zoo_core.export import CONFIG, MANIFEST, sha256_file

    manifest = json.loads((export_dir / MANIFEST).read_text())
    manifest["config"]["sha256"] = sha256_file(export_dir / CONFIG)
    (export_dir / MANIFEST).write_text(json.dumps(manifest))


def test_export_asking_for_a_huge_model_is_refused_in_bounded_memory(cli_run, trained, tmp_path):
    export = tmp_path / "exp"
    assert cli_run("export", trained, "-o", export).returncode == 0
    config = export / "config.yaml"
    text = config.read_text()
    assert "n_components: 16" in text
    config.write_text(text.replace("n_components: 16", "n_components: 300000000"))
    _resign(export)
    result, peak = run_measured("sample", export, "-o", tmp_path / "s.npy")
    assert_user_error(result, str(export / "model.safetensors"))
    assert peak < GIB, f"peak RSS {peak / 2**20:.0f} MiB"
    assert not (tmp_path / "s.npy").exists()
    assert_user_error(cli_run("eval", export), "expects (300000000,)")


def test_checkpoint_asking_for_a_huge_model_is_refused(cli_run, trained, tmp_path):
    checkpoint = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["n_components"] = 300_000_000
    path = tmp_path / "huge.ckpt"
    torch.save(checkpoint, path)
    assert_user_error(cli_run("sample", path, "-o", tmp_path / "s.npy"), str(path), "300000000")


def test_shape_check_before_building_also_covers_families_that_cannot_build_on_meta():
    """A constructor that needs real values (.item()) is built under an allocation budget instead."""
    from zoo_core.checkpoint import build_checked
    from zoo_core.errors import CheckpointError

    class NeedsValues(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            int(torch.zeros(1).sum())  # .item() on a meta tensor raises
            self.w = torch.nn.Parameter(torch.zeros(n, 2))

    shapes = {"w": (3, 2)}
    assert tuple(build_checked(NeedsValues, {"n": 3}, shapes, "f", ValueError).w.shape) == (3, 2)
    with pytest.raises(CheckpointError, match="more than"):
        build_checked(NeedsValues, {"n": 300_000_000}, shapes, "f", ValueError)


@pytest.mark.parametrize("override,fragment", [
    ("eval.iw_samples=100001", "at most 100,000"), ("eval.num_samples=1000000", "at most 100,000"),
    ("eval.quality_samples=2000000", "at most 1,000,000"), ("data.n_train=1000001", "[1, 1,000,000]"),
    ("data.n_test=2e6", "[1, 1,000,000]"), ("data.n_val=.inf", "[1, 1,000,000]"), ("data.n_train=0", "[1, 1,000,000]"),
    ("data.n_train=.nan", "[1, 1,000,000]"), ("optim.lr=1e300", "(0, 1e+06]"),
])
def test_size_caps_are_config_errors(cli_run, tmp_path, override, fragment):
    result = cli_run("train", "gmm-moons", "--runs-dir", tmp_path / "runs", *TINY, "--set", override)
    assert_user_error(result, override.split("=")[0], fragment)
    assert not (tmp_path / "runs").exists()


def test_a_crash_between_two_best_checkpoints_leaves_one_best_after_resume(tmp_path):
    """A new best-*.ckpt written, the process killed before the old one was removed: the resumed
    run keeps only the best that its last.ckpt knows (and then its own)."""
    runs = tmp_path / "runs"
    common = ["--runs-dir", str(runs), "--no-progress", "--accelerator", "cpu", "--set", "eval.metrics=[nll]",
              "--set", "model.fit=gradient", "--set", "train.batch_size=300", *SMALL_DATA]
    assert cli.main(["train", "gmm-moons", "--max-epochs", "2", *common]) == 0
    checkpoints = runs / "gmm-moons" / "version_0" / "checkpoints"
    (best,) = checkpoints.glob("best-*.ckpt")
    (checkpoints / "best-epoch999-step9999.ckpt").write_bytes(best.read_bytes())  # the crash's leftover
    assert cli.main(["train", "gmm-moons", "--resume", str(checkpoints.parent), "--max-epochs", "3", *common]) == 0
    assert len(list(checkpoints.glob("best-*.ckpt"))) == 1
