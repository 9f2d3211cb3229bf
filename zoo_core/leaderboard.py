"""The leaderboard of ``zoo bench``: rows from metrics.json files, a Markdown table, JSON and a picture.

Every figure comes from a run's metrics.json (or eval output); a metric that a run did not
produce is shown as an em dash, never estimated. Sample quality is the Fréchet distance in a
classifier's feature space (``fd`` with ``fd_data_floor``) where the run computed it, else the
sliced Wasserstein-1 distance in data space (``sliced_wasserstein`` with its data floor); the kernel
inception distance (``kid``, Bińkowski et al. 2018) has its own column where a run computed it.

Sample size. Each figure compares n model samples with n held-out examples (``eval.quality_samples``,
at most half the split), and entries are scored at different n. The plug-in Fréchet distance and the
empirical sliced Wasserstein distance are biased upwards by an amount that shrinks with n (Chong &
Forsyth 2020), and so is their data floor, in a different proportion: neither the figure nor its
ratio to the floor is comparable across n. KID is unbiased (its expectation does not depend on n;
only its noise does). So:

- the table gives n beside every FD/SW1 and KID figure, or once in the column header when all rows
  share it;
- the picture plots "sample distance / data floor" in one panel per n (titled ``n = ...``, each with
  its own axis), so entries scored at different n never share an axis. Grouping by n was chosen over
  plotting KID for everyone because KID is not among the default metrics and older runs lack it,
  while FD or SW1 is in every run; and KID's floor has expectation 0, so KID has no meaningful
  "distance / floor" ratio to plot.
"""
from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

from zoo_core.errors import ZooError
from zoo_core.expected import tally

DASH = "\u2014"
MARKER = "<!-- leaderboard:{tier}:{end} -->"


def _split(metrics: dict) -> str | None:
    """The split the leaderboard reports: test when evaluated, else val."""
    for split in ("test", "val"):
        if isinstance(metrics.get(split), dict):
            return split
    return None


def _get(d: dict | None, *keys: str) -> float | None:
    """The first of ``keys`` present in ``d`` as a finite number."""
    for key in keys:
        v = (d or {}).get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def make_row(zoo, entry: str, config: dict, metrics: dict | None, how: str, error: str | None = None,
             bench_seconds: float | None = None) -> dict:
    """One leaderboard row; ``metrics`` is the run's metrics.json (None when the entry failed)."""
    metrics = metrics or {}
    split = _split(metrics)
    r = metrics.get(split) if split else {}
    data = config["data"]
    kind = metrics.get("likelihood")
    if kind is None:
        family = zoo.plugins.families.get(config["family"])
        kind = family.meta("likelihood") if family is not None else None
    fd = _get(r, "fd")
    quality = ({"statistic": "FD", "value": fd, "data_floor": _get(r, "fd_data_floor"),
                "n": _count(r, "fd_num_samples")} if fd is not None else
               {"statistic": "SW1", "value": _get(r, "sliced_wasserstein", "sw1"),
                "data_floor": _get(r, "sliced_wasserstein_data_floor", "sw1_data_floor"),
                "n": _count(r, "quality_samples")})
    run_dir = metrics.get("run_dir")
    samples = Path(run_dir) / "samples.png" if run_dir else None
    expected = metrics.get("expected") or []
    return {
        "entry": entry, "family": config["family"], "data": data["name"], "representation": data["representation"],
        "likelihood": kind, "split": split, "bound": (r or {}).get("likelihood"),
        "nll_nats": _get(r, "nll_nats"), "nll_nats_stderr": _get(r, "nll_nats_stderr"),
        # set when the run evaluated a subset of the split (eval.examples): the cell then names its n
        "nll_examples": _count(r, "num_examples") if config.get("eval", {}).get("examples") else None,
        "bits_per_dim": _get(r, "bits_per_dim"), "nll_gap_nats": _get(r, "nll_gap_nats"),
        "quality": quality, "mmd2": _get(r, "mmd2"), "mmd2_data_floor": _get(r, "mmd2_data_floor"),
        "fd": fd, "fd_data_floor": _get(r, "fd_data_floor"), "fd_feature_extractor": (r or {}).get("fd_feature_extractor"),
        "kid": _get(r, "kid"), "kid_std": _get(r, "kid_std"), "kid_data_floor": _get(r, "kid_data_floor"),
        "kid_num_samples": _count(r, "kid_num_samples"),
        "sliced_wasserstein": _get(r, "sliced_wasserstein", "sw1"),
        "sliced_wasserstein_data_floor": _get(r, "sliced_wasserstein_data_floor", "sw1_data_floor"),
        "precision": _get(r, "precision"), "recall": _get(r, "recall"),
        "train_time_s": _train_time(metrics), "epochs": metrics.get("epochs"), "steps": metrics.get("steps"),
        "run_dir": run_dir, "samples_png": str(samples) if samples and samples.is_file() else None,
        "how": how, "error": error, "bench_seconds": bench_seconds,
        "expected": expected, "expected_tally": tally(expected),
        "other_metrics": _other_metrics(zoo, config, r or {}),
    }


def _count(d: dict | None, key: str) -> int | None:
    """``d[key]`` as a positive whole number (a sample size), else None."""
    v = _get(d, key)
    return int(v) if v is not None and v > 0 and v == int(v) else None


#: metrics whose keys have their own leaderboard columns
SHOWN_METRICS = ("nll", "sample_quality", "frechet", "kid", "precision_recall", "reconstruction")


def _other_metrics(zoo, config: dict, results: dict) -> dict[str, float]:
    """The summary keys that other metrics (a plugin's, say) declare, with this run's values: each
    metric lists its keys as ``summary_keys`` (or ``Lazy(..., keys=[...])``); the first one of each
    metric is shown."""
    out = {}
    for name in (config.get("eval") or {}).get("metrics") or []:
        reg = zoo.plugins.metrics.get(name)
        if name in SHOWN_METRICS or reg is None:
            continue
        keys = reg.meta("keys") or getattr(reg.obj, "summary_keys", None) or []
        for key in keys[:1]:
            value = results.get(key)
            if isinstance(value, (int, float)):
                out[key] = float(value)
    return out


# ---- formatting -----------------------------------------------------------------------------------
def fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return DASH
    if x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.1e}"
    return f"{x:.{digits}f}" if abs(x) < 10 else f"{x:.2f}"


def fmt_like(x: float | None, ref: float | None) -> str:
    """``x`` with as many decimals as ``ref`` gets from ``fmt`` (a standard error beside its mean)."""
    if x is None:
        return DASH
    return f"{x:.2f}" if ref is not None and abs(ref) >= 10 else fmt(x)


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(round(seconds % 60)):02d} s"
    return f"{int(seconds // 3600)} h {int(round(seconds % 3600 / 60)):02d} min"


def short_bound(text: str | None, width: int = 48) -> str:
    if not text:
        return DASH
    text = text.split(";")[0].strip()
    return text if len(text) <= width else text[: width - 1].rstrip(" ,") + "\u2026"


def _nll_cell(row: dict) -> str:
    if row["nll_nats"] is None:
        return DASH
    stderr = row["nll_nats_stderr"]
    cell = fmt(row["nll_nats"]) + (f" \u00b1 {fmt_like(stderr, row['nll_nats'])}" if stderr is not None else "")
    if row.get("nll_examples"):
        cell += f" (n = {row['nll_examples']})"
    return ("\u2264 " + cell) if row["likelihood"] == "bound" else cell


def shared_n(sizes: list[int | None]) -> int | None:
    """The one sample size of every measured figure (``None`` entries are figures not measured), or
    None when they differ or one is unknown: then each cell names its own n."""
    measured = set(sizes)
    return measured.pop() if len(measured) == 1 and None not in measured else None


def _n_suffix(n: int | None, shared: int | None) -> str:
    if shared is not None:
        return ""
    return f", n = {n}" if n is not None else ", n unknown"


def _quality_cell(row: dict, shared: int | None = None) -> str:
    q = row["quality"]
    if q["value"] is None:
        return DASH
    return f"{q['statistic']} {fmt(q['value'])} ({fmt(q['data_floor'])}){_n_suffix(q.get('n'), shared)}"


def _kid_cell(row: dict, shared: int | None = None) -> str:
    if row.get("kid") is None:
        return DASH
    std = f" \u00b1 {fmt_like(row['kid_std'], row['kid'])}" if row.get("kid_std") else ""  # 0: one subset, all n
    return f"{fmt(row['kid'])}{std} ({fmt(row.get('kid_data_floor'))}){_n_suffix(row.get('kid_num_samples'), shared)}"


def _header_n(shared: int | None, any_measured: bool) -> str:
    return f", n = {shared}" if shared is not None else (", at each row's n" if any_measured else "")


def _pr_cell(row: dict) -> str:
    if row["precision"] is None and row["recall"] is None:
        return DASH
    return f"{fmt(row['precision'], 2)} / {fmt(row['recall'], 2)}"


def _expected_cell(row: dict) -> str:
    if row["error"]:
        return "failed"
    t = row["expected_tally"]
    checked = t["pass"] + t["fail"] + t["missing"]
    if not checked and not t["reference"]:
        return DASH
    parts = [f"{t['pass']}/{checked} pass"] if checked else []
    if t["missing"]:
        parts.append(f"{t['missing']} missing")
    if t["reference"]:
        parts.append(f"{t['reference']} ref.")
    return ", ".join(parts)


def _bound_text(e: dict) -> str:
    v, tol = fmt(e["expected"]), fmt_like(e["tolerance"], e["expected"])
    return {"within": f"{v} \u00b1 {tol}",
            "at_most": f"\u2264 {v}" + (f" + {tol}" if e["tolerance"] else ""),
            "at_least": f"\u2265 {v}" + (f" \u2212 {tol}" if e["tolerance"] else "")}[e["direction"]]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_tables(board: dict) -> str:
    """The main table, then every expectation side by side with its source."""
    rows = board["rows"]
    extra = any(r.get("other_metrics") for r in rows)
    with_kid = any(r.get("kid") is not None for r in rows)
    measured = [r for r in rows if r["quality"]["value"] is not None]
    q_n = shared_n([r["quality"].get("n") for r in measured])
    kid_rows = [r for r in rows if r.get("kid") is not None]
    kid_n = shared_n([r.get("kid_num_samples") for r in kid_rows])
    dated = _measured_dates(rows)  # a *measured* column when the rows come from different runs of the bench
    head = ("| entry | family | data | likelihood | NLL (nats) | bits/dim | bound "
            f"| sample quality (data floor){_header_n(q_n, bool(measured))} "
            + (f"| KID \u00b1 std (data floor){_header_n(kid_n, True)} " if with_kid else "")
            + "| precision / recall | NLL gap (nats) | train time | epochs | expected |"
            + (" other metrics |" if extra else "") + (" measured |" if dated else ""))
    lines = [head, "|" + " --- |" * head.count(" | ") + " --- |"]
    for r in rows:
        others = ([", ".join(f"{k} {fmt(v)}" for k, v in (r.get("other_metrics") or {}).items()) or DASH]
                  if extra else [])
        data = r["data"] + ("" if r["representation"] == "continuous" else f", {r['representation']}")
        nll = _nll_cell(r) if not r["error"] else f"failed: {r['error']}"
        lines.append("| " + " | ".join(_cell(c) for c in (
            f"`{r['entry']}`", r["family"], data, r["likelihood"] or DASH, nll, fmt(r["bits_per_dim"], 4),
            short_bound(r["bound"]) if r["nll_nats"] is not None else DASH, _quality_cell(r, q_n),
            *([_kid_cell(r, kid_n)] if with_kid else []), _pr_cell(r),
            fmt(r["nll_gap_nats"]), fmt_time(r["train_time_s"]), r["epochs"] if r["epochs"] is not None else DASH,
            _expected_cell(r), *others,
            *([(r.get("measured") or DASH)[:10]] if dated else []))) + " |")
    out = ["\n".join(lines)]
    notes = [f"NLLs are {board['split_note']}; \u2264 marks an upper bound (bound families). Sample quality: FD = "
             "Fréchet distance (in a classifier's feature space for images, in data space for 2-D data), SW1 = "
             "sliced Wasserstein-1 in data space (where a run has no FD); in brackets "
             "the same statistic between two halves of held-out data (what a perfect model would reach). "
             "n = the number of model samples (and of held-out examples) compared: FD and SW1 and their floors "
             "shrink as n grows, so compare them only at the same n"
             + ("; KID = kernel inception distance (unbiased MMD\u00b2, Bi\u0144kowski et al. 2018) in the "
                "features of FD, \u00b1 its spread over subsets of 1000 (where n > 1000), whose expectation does "
                "not depend on n (its floor's is 0)" if with_kid else "") + f". {DASH} = not measured by that run."]
    expectations = [(r, e) for r in board["rows"] for e in r["expected"]]
    if expectations:
        head = "| entry | metric | ours | expected | kind | status | short by | source | compute (theirs / ours) |"
        lines = [head, "|" + " --- |" * head.count(" | ") + " --- |"]
        for r, e in expectations:
            epochs = f"{r['epochs']} epoch{'' if r['epochs'] == 1 else 's'}, " if r["epochs"] is not None else ""
            ours_compute = f"{epochs}{fmt_time(r['train_time_s'])} on {board['machine_short']}"
            status = {"pass": "pass", "fail": "**fail**", "missing": "missing", "reference": "reference"}.get(
                e["status"], e["status"])
            lines.append("| " + " | ".join(_cell(c) for c in (
                f"`{r['entry']}`", e["metric"], fmt(e["measured"]), _bound_text(e), e["kind"], status,
                fmt_like(e["shortfall"], e["expected"]) if e["shortfall"] else ("0" if e["shortfall"] == 0 else DASH),
                e["source"],
                f"{e['compute'] or DASH} / {ours_compute}")) + " |")
        out.append("Expected results (registry `expected`): *published* = a paper's figure for the same model "
                   "class, *target* = what this entry should reach on the stated compute, *reproduction* = our "
                   "own earlier run, *reference* = a related published figure for context. *Short by* = how far "
                   "our figure is behind the stated value.\n\n" + "\n".join(lines))
    return "\n\n".join(out) + "\n\n" + notes[0] + "\n"


def provenance(board: dict) -> str:
    text = f"Generated by `{board['command']}` on {board['date']}, {board['machine']}."
    kept = sorted({r["kept_from"] for r in board["rows"] if r.get("kept_from")})
    if kept:
        text += (" Rows of entries not run by that command were kept from "
                 + ", ".join(f"`{c}`" for c in kept) + " (the *measured* column gives each row's date).")
    return text


def _measured_dates(rows: list[dict]) -> bool:
    """Whether the rows were measured at different times (a *measured* column is then shown)."""
    return len({r.get("measured") for r in rows}) > 1


def render_markdown(board: dict, title: bool = True, picture: str | None = None) -> str:
    parts = [f"# Leaderboard: {board['tier']} tier\n"] if title else []
    parts.append(provenance(board) + "\n")
    parts.append(markdown_tables(board))
    if picture:
        parts.append(f"\n![leaderboard: samples and NLL against training time]({picture})\n")
    return "\n".join(parts)


# ---- the machine -------------------------------------------------------------------------------------
def machine_description() -> tuple[str, str]:
    """(long, short) descriptions: CPU model and cores, GPU if any, torch version."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count() or 1
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    long = (f"{platform.system()} {platform.machine()}, {cpu}, {cores} CPU cores, "
            f"{'GPU ' + gpu if gpu else 'no GPU'}, torch {torch.__version__}")
    return long, (gpu or f"{cores}-core CPU")


# ---- README ------------------------------------------------------------------------------------------
def replace_in_readme(readme: str | Path, tier: str, text: str) -> None:
    """Replace what lies between ``<!-- leaderboard:TIER:begin -->`` and ``...:end -->``."""
    path = Path(readme)
    try:
        content = path.read_text()
    except OSError as exc:
        raise ZooError(f"--readme {path}: cannot read ({exc.strerror or exc})") from None
    begin, end = MARKER.format(tier=tier, end="begin"), MARKER.format(tier=tier, end="end")
    if content.count(begin) != 1 or content.count(end) != 1:
        found = f"{content.count(begin)} '{begin}' and {content.count(end)} '{end}'"
        raise ZooError(f"--readme {path}: expected exactly one '{begin}' ... '{end}' pair of markers "
                       f"around the {tier} leaderboard, found {found}")
    i, j = content.index(begin) + len(begin), content.index(end)
    if j < i:
        raise ZooError(f"--readme {path}: '{end}' comes before '{begin}'")
    new = content[:i] + "\n" + text.strip() + "\n" + content[j:]
    from zoo_core.checkpoint_io import write_atomic

    write_atomic(path, new)


# ---- the picture -------------------------------------------------------------------------------------
def quality_groups(rows: list[dict]) -> list[tuple[int | None, list[dict]]]:
    """The rows with a sample-quality ratio to plot (a figure, a positive floor and a training time),
    grouped by their sample size n, smallest n first (n unknown last): one panel each."""
    groups: dict[int | None, list[dict]] = {}
    for r in rows:
        q = r["quality"]
        if r["train_time_s"] is not None and q["value"] is not None and q["data_floor"]:
            groups.setdefault(q.get("n"), []).append(r)
    return sorted(groups.items(), key=lambda item: (item[0] is None, item[0] or 0))


def draw_picture(board: dict):
    """The leaderboard figure (a matplotlib Figure): each entry's samples.png side by side, then NLL
    (bits/dim) against training time, then "sample distance / data floor" against training time in one
    panel per sample size n (see the module docstring: figures at different n share no axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    rows = board["rows"]
    cols = max(1, min(4, len(rows)))
    sample_rows = math.ceil(len(rows) / cols)
    groups = quality_groups(rows)
    fig = plt.figure(figsize=(max(9.0, 4.0 * cols, 4.5 + 3.2 * len(groups)), 2.6 * sample_rows + 3.8))
    grid = fig.add_gridspec(sample_rows + 1, 2 * cols, height_ratios=[2.6] * sample_rows + [3.4])
    for i, r in enumerate(rows):
        ax = fig.add_subplot(grid[i // cols, 2 * (i % cols): 2 * (i % cols) + 2])
        ax.axis("off")
        ax.set_title(f"{r['entry']} ({r['family']})", fontsize=9)
        if r["samples_png"] and Path(r["samples_png"]).is_file():
            ax.imshow(plt.imread(r["samples_png"]))
        else:  # a failed run, or a kept row whose run directory is gone
            what = "failed" if r["error"] else ("samples.png gone" if r["samples_png"] else "no samples.png")
            ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="gray")
    half = cols
    ax_nll = fig.add_subplot(grid[sample_rows, :half])
    panels = grid[sample_rows, half:].subgridspec(1, max(1, len(groups)), wspace=0.35)
    quality_axes = [fig.add_subplot(panels[0, k]) for k in range(max(1, len(groups)))]
    for r in rows:
        t = r["train_time_s"]
        if t is not None and r["bits_per_dim"] is not None:
            bound = r["likelihood"] == "bound"
            ax_nll.scatter([t], [r["bits_per_dim"]], marker="o", facecolors="none" if bound else "tab:blue",
                           edgecolors="tab:blue")
            ax_nll.annotate(r["entry"], (t, r["bits_per_dim"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for ax_q, (n, members) in zip(quality_axes, groups):
        for r in members:
            q, t = r["quality"], r["train_time_s"]
            ratio = q["value"] / q["data_floor"]
            ax_q.scatter([t], [ratio], marker="s" if q["statistic"] == "FD" else "^", color="tab:orange")
            ax_q.annotate(r["entry"], (t, ratio), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax_q.set_title(f"sample quality, n = {n}" if n is not None else "sample quality, n unknown", fontsize=9)
    for ax in (ax_nll, *quality_axes):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training time (s, log scale)")
        ax.grid(alpha=0.3)
    ax_nll.set_ylabel(f"{board['split']} NLL (bits/dim)")
    ax_nll.set_title("NLL against training time\n(hollow: an upper bound)", fontsize=9)
    for ax_q in quality_axes:
        ax_q.axhline(1.0, color="gray", lw=0.8, ls="--")
    quality_axes[0].set_ylabel("sample distance / data floor\n(\u25a0 FD, \u25b2 sliced W1; dashed: floor)")
    if not groups:
        quality_axes[0].set_title("sample quality", fontsize=9)
    fig.suptitle(f"zoo bench --tier {board['tier']}: {board['date']}, {board['machine_short']}", fontsize=10)
    fig.tight_layout()
    return fig


def save_picture(board: dict, path: str | Path) -> None:
    """Write ``draw_picture(board)`` to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = draw_picture(board)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def sanitize_for_json(obj):
    """NaN/inf never reach the JSON file (they are not JSON); absent figures are null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: sanitize_for_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [sanitize_for_json(v) for v in obj]
    return obj


def _train_time(metrics: dict) -> float | None:
    """Training time over every start of the run; this start's alone for runs that predate the total
    (metrics.json without ``train_time_total_s``); None when a resumed run's earlier time is unknown."""
    if "train_time_total_s" in metrics:
        return metrics["train_time_total_s"]
    return _get(metrics, "wall_time_s")
