"""zoo bench: tier selection, the leaderboard files, --reuse without retraining, README markers."""
import json

import pytest
import yaml

from conftest import run_zoo
from zoo_core.errors import ConfigError, ZooError

TINY = {
    "tiny-gmm": {"family": "gmm", "tier": "quick", "data": {"name": "moons"},
                 "model": {"n_components": 4, "covariance": "full"}, "optim": {"lr": 1.0e-2},
                 "train": {"max_steps": 20, "batch_size": 256}, "eval": {"quality_samples": 200},
                 "expected": [{"metric": "test.nll_nats", "value": 50.0, "direction": "at_most", "kind": "target",
                               "source": "a loose bound"},
                              {"metric": "test.no_such_metric", "value": 1.0, "direction": "at_most", "source": "absent"}]},
    "tiny-gan": {"family": "gan", "tier": "quick", "data": {"name": "moons"},
                 "model": {"arch": "mlp", "latent_dim": 4, "g_hidden": [32], "d_hidden": [32]},
                 "optim": {"lr": 1.0e-3, "betas": [0.5, 0.999]},
                 "train": {"max_steps": 20, "batch_size": 256}, "eval": {"quality_samples": 200}},
    "tiny-other": {"family": "gmm", "tier": "full", "data": {"name": "moons"}, "model": {"n_components": 2}},
}
README = "# x\n\n## Leaderboard\n\n<!-- leaderboard:quick:begin -->\nold table\n<!-- leaderboard:quick:end -->\n\nrest\n"


@pytest.fixture(scope="module")
def benched(tmp_path_factory):
    """One real `zoo bench` run (a subprocess, as a user runs it) of two tiny entries."""
    root = tmp_path_factory.mktemp("bench")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    (root / "README.md").write_text(README)
    result = run_zoo("bench", "--tier", "quick", "--registry", root / "tiny.yaml", "--only", "tiny-gmm", "tiny-gan",
                     "--out", root / "out", "--runs-dir", root / "runs", "--readme", root / "README.md",
                     "--accelerator", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result


def _bench(root, **kw):
    from zoo_core.api import default_zoo
    from zoo_core.bench import BenchOptions, run

    opts = dict(tier="quick", out=str(root / "out2"), runs_dir=str(root / "runs"),
                registry_files=[str(root / "tiny.yaml")], only=["tiny-gmm", "tiny-gan"], accelerator="cpu")
    opts.update(kw)
    return run(default_zoo(), BenchOptions(**opts), log=lambda line: None)


def test_bench_writes_leaderboard_md_json_png(benched):
    root, result = benched
    out = root / "out"
    board = json.loads((out / "leaderboard.json").read_text())
    rows = {r["entry"]: r for r in board["rows"]}
    assert list(rows) == ["tiny-gmm", "tiny-gan"] and board["tier"] == "quick"
    gmm, gan = rows["tiny-gmm"], rows["tiny-gan"]
    metrics = json.loads((root / "runs" / "tiny-gmm" / "version_0" / "metrics.json").read_text())
    assert gmm["nll_nats"] == metrics["test"]["nll_nats"] and gmm["likelihood"] == "exact"
    key = {"FD": "fd", "SW1": "sliced_wasserstein"}[gmm["quality"]["statistic"]]  # FD where the run has it
    assert gmm["quality"]["statistic"] == ("FD" if "fd" in metrics["test"] else "SW1")
    assert gmm["quality"]["value"] == metrics["test"][key]
    assert gmm["quality"]["data_floor"] == metrics["test"][f"{key}_data_floor"]
    n_key = {"FD": "fd_num_samples", "SW1": "quality_samples"}[gmm["quality"]["statistic"]]
    assert gmm["quality"]["n"] == metrics["test"][n_key] == gan["quality"]["n"] == 200  # eval.quality_samples
    assert gmm["train_time_s"] == metrics["wall_time_s"] and gmm["how"] == "trained"
    assert [e["status"] for e in gmm["expected"]] == ["pass", "missing"]
    assert gan["likelihood"] == "none" and gan["nll_nats"] is None and gan["bits_per_dim"] is None
    assert gan["quality"]["value"] is not None and gan["samples_png"].endswith("samples.png")

    md = (out / "leaderboard.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| `tiny-")]
    assert len(table) == 4  # two leaderboard rows, then the two expectations of tiny-gmm (one per row)
    gmm_line, gan_line = table[0], table[1]
    assert f"{metrics['test']['nll_nats']:.3f}" in gmm_line and "exact log-likelihood" in gmm_line
    assert "1/2 pass, 1 missing" in gmm_line  # one pass of two checked; the other metric is absent
    cells = [c.strip() for c in gan_line.strip("|").split("|")]
    assert cells[:4] == ["`tiny-gan`", "gan", "moons", "none"]
    assert cells[4] == cells[5] == "\u2014"  # no likelihood: an em dash, never a number
    assert "nan" not in md.lower() and "None" not in md
    assert "| sample quality (data floor), n = 200 |" in md  # one n for every row: said once, in the header
    assert "zoo bench --tier quick" in md and "CPU cores" in md

    import matplotlib.pyplot as plt

    picture = plt.imread(out / "leaderboard.png")
    assert picture.ndim == 3 and picture.shape[0] > 300 and picture.shape[1] > 600
    assert "wrote" in result.stdout and "[2/2] tiny-gan: trained" in result.stdout


def test_readme_markers_replaced(benched):
    root, _ = benched
    readme = (root / "README.md").read_text()
    assert "old table" not in readme
    assert readme.startswith("# x\n\n## Leaderboard\n\n<!-- leaderboard:quick:begin -->\n")
    assert readme.endswith("<!-- leaderboard:quick:end -->\n\nrest\n")
    inner = readme.split("<!-- leaderboard:quick:begin -->")[1].split("<!-- leaderboard:quick:end -->")[0]
    assert "Generated by `zoo bench --tier quick" in inner and "| `tiny-gmm` |" in inner
    assert "](out/leaderboard.png)" in inner  # the picture, relative to the README


def test_reuse_does_not_retrain(benched):
    root, _ = benched
    runs = root / "runs"
    before = {p: p.stat().st_mtime_ns for p in runs.glob("*/*/metrics.json")}
    board = _bench(root, reuse=True)
    assert [r["how"] for r in board["rows"]] == [f"reused {runs / 'tiny-gmm' / 'version_0'}",
                                                 f"reused {runs / 'tiny-gan' / 'version_0'}"]
    assert sorted(p.name for p in (runs / "tiny-gmm").iterdir()) == ["version_0"]
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/*/metrics.json")} == before
    first = json.loads((root / "out" / "leaderboard.json").read_text())["rows"][0]
    assert board["rows"][0]["nll_nats"] == first["nll_nats"]


def test_reuse_retrains_on_other_training_config_and_reevaluates_on_other_eval(benched, tmp_path):
    root, _ = benched
    changed = json.loads(json.dumps(TINY))
    changed["tiny-gmm"]["train"]["max_steps"] = 10      # training differs: a new run
    changed["tiny-gan"]["eval"]["quality_samples"] = 150  # only eval differs: evaluated again, not retrained
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    runs = root / "runs"
    board = _bench(root, reuse=True, registry_files=[str(tmp_path / "tiny.yaml")], out=str(tmp_path / "out"))
    gmm, gan = board["rows"]
    assert gmm["how"] == "trained" and gmm["run_dir"] == str(runs / "tiny-gmm" / "version_1")
    assert gan["how"].startswith(f"reused {runs / 'tiny-gan' / 'version_0'}") and "evaluated again" in gan["how"]
    assert sorted(p.name for p in (runs / "tiny-gan").iterdir()) == ["version_0"]
    assert (runs / "tiny-gan" / "version_0" / "eval_test.json").is_file()
    assert gan["quality"]["value"] is not None
    # once more: that evaluation (made with these eval settings, after the last checkpoint) is taken as it is
    evaluation = runs / "tiny-gan" / "version_0" / "eval_test.json"
    stamp = evaluation.stat().st_mtime_ns
    again = _bench(root, reuse=True, registry_files=[str(tmp_path / "tiny.yaml")], out=str(tmp_path / "out2"))
    assert "earlier evaluation eval_test.json" in again["rows"][1]["how"] and evaluation.stat().st_mtime_ns == stamp
    assert again["rows"][1]["quality"] == gan["quality"]


def test_failed_entry_is_a_row_and_an_error_after_the_others(benched, tmp_path, monkeypatch):
    import zoo_core.runner as runner

    root, _ = benched
    real = runner.train

    def train(zoo, entry, opts):
        if entry == "tiny-gan":
            raise ZooError("the GAN fell over")
        return real(zoo, entry, opts)

    monkeypatch.setattr(runner, "train", train)
    with pytest.raises(ZooError, match=r"1 of 2 entries failed \(tiny-gan: the GAN fell over\)"):
        _bench(root, out=str(tmp_path / "out"), runs_dir=str(tmp_path / "runs"))
    rows = json.loads((tmp_path / "out" / "leaderboard.json").read_text())["rows"]
    assert rows[0]["how"] == "trained" and rows[0]["nll_nats"] is not None
    assert rows[1]["how"] == "failed" and rows[1]["error"] == "the GAN fell over"
    assert "failed: the GAN fell over" in (tmp_path / "out" / "leaderboard.md").read_text()


def test_a_signal_stops_the_bench_and_keeps_the_old_leaderboard(benched, tmp_path, monkeypatch):
    """SIGTERM during one entry's training (the runner raises Interrupted) ends the whole bench with
    exit code 143; the next entries are not trained and the earlier leaderboard is left as it was."""
    import zoo_core.runner as runner
    from zoo_core.runner.train import Interrupted

    root, _ = benched
    trained = []

    def train(zoo, entry, opts):
        trained.append(entry)
        raise Interrupted("training stopped by SIGTERM at step 3")

    out = tmp_path / "out"
    out.mkdir()
    (out / "leaderboard.json").write_text("{}")
    monkeypatch.setattr(runner, "train", train)
    with pytest.raises(Interrupted, match=r"stopped at entry 1 of 2 \(tiny-gmm\).*--reuse") as info:
        _bench(root, out=str(out), runs_dir=str(tmp_path / "runs"))
    assert info.value.exit_code == 143 and trained == ["tiny-gmm"]
    assert (out / "leaderboard.json").read_text() == "{}"


def test_keep_rows_keeps_the_other_entries_rows_with_their_dates(benched, tmp_path):
    """--only X --keep-rows: X's row is new, the tier's other rows come from the earlier
    leaderboard.json unchanged, with the date and command that measured them."""
    import shutil

    root, _ = benched
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    earlier = json.loads((out / "leaderboard.json").read_text())
    earlier["date"] = "2026-01-02 03:04 UTC"
    for row in earlier["rows"]:  # a leaderboard written before rows carried their own date
        row.pop("measured", None)
        row["samples_png"] = str(tmp_path / "gone" / "samples.png")  # its run directory was deleted since
    (out / "leaderboard.json").write_text(json.dumps(earlier))
    board = _bench(root, out=str(out), only=["tiny-gan"], reuse=True, keep_rows=True)
    rows = {r["entry"]: r for r in board["rows"]}
    assert list(rows) == ["tiny-gmm", "tiny-gan"]
    kept = {k: v for k, v in rows["tiny-gmm"].items() if k not in ("measured", "kept_from")}
    assert kept == next(r for r in earlier["rows"] if r["entry"] == "tiny-gmm")
    assert rows["tiny-gmm"]["measured"] == "2026-01-02 03:04 UTC" and rows["tiny-gmm"]["kept_from"] == earlier["command"]
    assert rows["tiny-gan"]["measured"] == board["date"] and "kept_from" not in rows["tiny-gan"]
    text = (out / "leaderboard.md").read_text()
    assert "| measured |" in text and "2026-01-02" in text and f"kept from `{earlier['command']}`" in text
    assert "--keep-rows" in board["command"]


def test_keep_rows_refuses_a_file_that_is_not_a_leaderboard(benched, tmp_path):
    root, _ = benched
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "leaderboard.json").write_text("[1, 2]")
    with pytest.raises(ZooError, match=r"--keep-rows: .*leaderboard.json is not a leaderboard.json"):
        _bench(root, out=str(tmp_path / "out"), only=["tiny-gan"], reuse=True, keep_rows=True)


def test_tier_selection(tmp_path, zoo):
    from zoo_core.bench import tier_entries
    from zoo_core.registry import Registry

    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    registry = zoo.with_registry([tmp_path / "tiny.yaml"]).registry
    quick = tier_entries(registry, "quick")
    assert "gmm-moons" in quick and "tiny-gan" in quick and "gmm-mnist" not in quick and "tiny-other" not in quick
    assert "vae-mnist" in tier_entries(registry, "full") and "tiny-other" in tier_entries(registry, "full")
    assert tier_entries(registry, "quick", ["tiny-gan", "gmm-moons"]) == ["gmm-moons", "tiny-gan"]
    with pytest.raises(ConfigError, match=r"--only tiny-other: entry 'tiny-other' is not in the quick tier "
                                          r"\(its tier: full"):
        tier_entries(registry, "quick", ["tiny-other"])
    with pytest.raises(ConfigError, match=r"--only tiny-gn: unknown registry entry 'tiny-gn'.*did you mean"):
        tier_entries(registry, "quick", ["tiny-gn"])
    (tmp_path / "q.yaml").write_text(yaml.safe_dump({k: v for k, v in TINY.items() if v["tier"] == "quick"}, sort_keys=False))
    with pytest.raises(ConfigError, match="no registry entry has 'tier: full'"):
        tier_entries(Registry([tmp_path / "q.yaml"], zoo.plugins, include_builtin=False), "full")


@pytest.mark.parametrize("text, fragment", [
    ("no markers at all\n", "found 0 '<!-- leaderboard:quick:begin -->' and 0"),
    ("<!-- leaderboard:quick:end -->\n<!-- leaderboard:quick:begin -->\n", "comes before"),
    ("<!-- leaderboard:quick:begin -->\n<!-- leaderboard:quick:end -->\n" * 2, "found 2"),
    ("<!-- leaderboard:full:begin -->\n<!-- leaderboard:full:end -->\n", "found 0"),
])
def test_readme_without_the_markers_is_an_error(tmp_path, text, fragment):
    from zoo_core.leaderboard import replace_in_readme

    path = tmp_path / "README.md"
    path.write_text(text)
    with pytest.raises(ZooError, match="--readme") as info:
        replace_in_readme(path, "quick", "table")
    assert fragment in str(info.value) and len(str(info.value).splitlines()) == 1
    assert path.read_text() == text  # untouched


def test_readme_replacement_is_idempotent(tmp_path):
    from zoo_core.leaderboard import replace_in_readme

    path = tmp_path / "README.md"
    path.write_text(README)
    replace_in_readme(path, "quick", "| a |\n")
    once = path.read_text()
    replace_in_readme(path, "quick", "| a |\n")
    assert path.read_text() == once == README.replace("old table", "| a |")


@pytest.mark.parametrize("args, fragment", [
    (["--only", "tiny-other"], "is not in the quick tier"),
    (["--only", "tiny-gmm", "--readme", "missing.md"], "--readme missing.md: no such file"),
])
def test_cli_bench_errors_are_one_line(tmp_path, capsys, monkeypatch, args, fragment):
    from zoo_core.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    code = main(["bench", "--tier", "quick", "--registry", "tiny.yaml", "--out", "out", *args])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_missing_metrics_render_as_dash(zoo):
    from zoo_core.leaderboard import make_row, markdown_tables

    config = {"family": "gan", "data": {"name": "digits", "representation": "dequantized"}}
    row = make_row(zoo, "x", config, {"likelihood": "none", "test": {"quality_samples": 10}}, "trained")
    board = {"rows": [row], "split_note": "test", "machine_short": "cpu"}
    line = next(l for l in markdown_tables(board).splitlines() if l.startswith("| `x`"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[4:13] == ["\u2014"] * 9
