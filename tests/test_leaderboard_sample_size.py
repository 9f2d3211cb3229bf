"""The leaderboard never compares sample-quality figures measured at different sample sizes n: the table
names each figure's n (or the one n in its header), the picture has one panel per n."""
import pytest

from zoo_core.leaderboard import draw_picture, make_row, markdown_tables, quality_groups, shared_n


def _row(zoo, entry, data, test, seconds):
    config = {"family": "gmm", "data": {"name": data, "representation": "dequantized"}, "eval": {}}
    metrics = {"likelihood": "exact", "test": test, "wall_time_s": seconds}
    return make_row(zoo, entry, config, metrics, "trained")


def _fd(value, floor, n, **extra):
    return {"fd": value, "fd_data_floor": floor, "fd_num_samples": n, **extra}


def _board(rows):
    return {"rows": rows, "split": "test", "split_note": "test-split figures", "tier": "quick", "date": "today",
            "machine_short": "cpu"}


def _quality_cells(md):
    """{entry: its sample-quality cell} and the header of the main table."""
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| entry | family"))
    column = next(i for i, c in enumerate(header.strip("|").split("|")) if c.strip().startswith("sample quality"))
    cells = {}
    for line in lines:
        if line.startswith("| `"):
            parts = [c.strip() for c in line.strip("|").split("|")]
            cells.setdefault(parts[0].strip("`"), parts[column])
    return header, cells


@pytest.fixture
def mixed(zoo):
    """A digits entry scored at n = 150 (its FD / floor ratio looks better: both are inflated at small n),
    two at n = 2000, a 2-D entry with SW1 at n = 2000 and an old run that did not record n."""
    return [
        _row(zoo, "small-n", "digits", _fd(12.0, 8.0, 150, kid=0.5, kid_std=0.0, kid_data_floor=-0.2,
                                              kid_num_samples=150), 30.0),
        _row(zoo, "large-n", "mnist", _fd(3.0, 0.5, 2000, kid=0.6, kid_std=0.1, kid_data_floor=0.01,
                                             kid_num_samples=2000), 300.0),
        _row(zoo, "large-n-too", "mnist", _fd(2.0, 0.5, 2000), 100.0),
        _row(zoo, "moons-sw1", "moons", {"sliced_wasserstein": 0.2, "sliced_wasserstein_data_floor": 0.05,
                                         "quality_samples": 2000}, 5.0),
        _row(zoo, "old-run", "mnist", {"fd": 4.0, "fd_data_floor": 0.5}, 50.0),
    ]


def test_rows_carry_the_sample_size_of_their_figure(mixed):
    n = {r["entry"]: r["quality"]["n"] for r in mixed}
    assert n == {"small-n": 150, "large-n": 2000, "large-n-too": 2000, "moons-sw1": 2000, "old-run": None}
    assert mixed[0]["kid"] == 0.5 and mixed[0]["kid_num_samples"] == 150 and mixed[2]["kid"] is None
    assert shared_n([150, 150]) == 150 and shared_n([150, 2000]) is None and shared_n([2000, None]) is None


def test_table_names_each_figures_n_when_rows_differ(mixed):
    header, cells = _quality_cells(markdown_tables(_board(mixed)))
    assert "| sample quality (data floor), at each row's n |" in header
    assert cells["small-n"] == "FD 12.00 (8.000), n = 150"
    assert cells["large-n"] == "FD 3.000 (0.500), n = 2000"
    assert cells["moons-sw1"] == "SW1 0.200 (0.050), n = 2000"
    assert cells["old-run"] == "FD 4.000 (0.500), n unknown"
    md = markdown_tables(_board(mixed))
    small = next(line for line in md.splitlines() if line.startswith("| `small-n`"))
    assert "| 0.500 (-0.200), n = 150 |" in small  # KID beside its own n (no spread: the one subset is all n)
    large = next(line for line in md.splitlines() if line.startswith("| `large-n`"))
    assert "| 0.600 \u00b1 0.100 (0.010), n = 2000 |" in large
    assert "KID \u00b1 std (data floor), at each row's n" in md and "compare them only at the same n" in md


def test_table_puts_a_shared_n_in_the_header(zoo):
    rows = [_row(zoo, "a", "mnist", _fd(3.0, 0.5, 2000), 10.0), _row(zoo, "b", "mnist", _fd(2.0, 0.5, 2000), 20.0),
            _row(zoo, "c", "mnist", {}, 5.0)]  # no figure: an em dash, not a different n
    md = markdown_tables(_board(rows))
    header, cells = _quality_cells(md)
    assert "sample quality (data floor), n = 2000" in header and "KID" not in header
    assert cells == {"a": "FD 3.000 (0.500)", "b": "FD 2.000 (0.500)", "c": "\u2014"}


def test_picture_never_puts_rows_at_different_n_on_one_axis(mixed):
    """Each quality panel holds the rows of one n, named in its title; a panel mixing n fails here."""
    import matplotlib.pyplot as plt

    assert [n for n, _ in quality_groups(mixed)] == [150, 2000, None]
    fig = draw_picture(_board(mixed))
    try:
        panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title().startswith("sample quality")}
        assert sorted(panels) == ["sample quality, n = 150", "sample quality, n = 2000", "sample quality, n unknown"]
        n_of = {r["entry"]: r["quality"]["n"] for r in mixed}
        placed = {}
        for title, ax in panels.items():
            entries = [t.get_text() for t in ax.texts]
            assert len({n_of[e] for e in entries}) == 1, (title, entries)  # one n per axis
            assert title.endswith(f"n = {n_of[entries[0]]}" if n_of[entries[0]] else "n unknown")
            assert sum(len(c.get_offsets()) for c in ax.collections) == len(entries)
            placed.update({e: title for e in entries})
        assert sorted(placed) == sorted(n_of)  # every row is plotted, once
        assert placed["small-n"] != placed["large-n"]
        ratios = {t.get_text(): t.xy[1] for ax in panels.values() for t in ax.texts}
        assert ratios["small-n"] == pytest.approx(12.0 / 8.0) and ratios["large-n"] == pytest.approx(3.0 / 0.5)
    finally:
        plt.close(fig)


def test_an_nll_measured_on_part_of_the_split_names_its_n(zoo):
    """eval.examples: the NLL of a subset says so (its n), the NLL of a whole split does not."""
    test = {"nll_nats": 80.0, "nll_nats_stderr": 0.5, "num_examples": 1000}
    config = {"family": "gmm", "data": {"name": "mnist", "representation": "dequantized"}}
    subset = make_row(zoo, "subset", {**config, "eval": {"examples": 1000}}, {"likelihood": "exact", "test": test}, "")
    whole = make_row(zoo, "whole", {**config, "eval": {"examples": None}},
                     {"likelihood": "exact", "test": {**test, "num_examples": 10000}}, "")
    md = markdown_tables(_board([subset, whole]))
    line = {name: next(x for x in md.splitlines() if x.startswith(f"| `{name}`")) for name in ("subset", "whole")}
    assert "80.00 ± 0.50 (n = 1000)" in line["subset"]
    assert "(n = " not in line["whole"].split("|")[5]
