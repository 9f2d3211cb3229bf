"""``zoo bench``: train and evaluate every registry entry of a tier, then write the leaderboard.

Tiers are the registry key ``tier``: ``quick`` (the toy 2-D and 8x8 digits entries of every
family, minutes on a CPU) and ``full`` (the MNIST entries, hours on a CPU). Entries run one after
another in this process through ``runner.train``. With ``--reuse`` an entry is not retrained
when a finished run of it (a run directory with ``metrics.json``) was trained with the same
configuration: the saved ``config.yaml`` is resolved again (so defaults added since are filled
in) and its family, data, model, optim and train sections must equal the entry's. When only
the ``eval`` section differs (e.g. metrics added since), the run's final checkpoint is evaluated
again with the entry's current evaluation settings instead of retraining.

Output in ``--out`` (default ``bench/TIER/``): ``leaderboard.md``, ``leaderboard.json`` and
``leaderboard.png`` (see ``zoo_core/leaderboard.py``).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import yaml

from zoo_core import leaderboard
from zoo_core.errors import ConfigError, ZooError
from zoo_core.expected import check as check_expected
from zoo_core.checkpoint import LAST
from zoo_core.registry import TIERS, Registry, resolve_entry, suggest

TRAINING_SECTIONS = ("family", "data", "model", "optim", "train")


@dataclass
class BenchOptions:
    tier: str
    out: str | None = None
    runs_dir: str | None = None
    readme: str | None = None
    only: list[str] = field(default_factory=list)
    reuse: bool = False
    keep_rows: bool = False
    registry_files: list[str] = field(default_factory=list)
    data_dir: str | None = None
    accelerator: str = "auto"
    progress: bool = False

    def command(self) -> str:
        parts = ["zoo bench", f"--tier {self.tier}"]
        parts += [f"--registry {f}" for f in self.registry_files]
        if self.only:
            parts.append("--only " + " ".join(self.only))
        if self.reuse:
            parts.append("--reuse")
        if self.keep_rows:
            parts.append("--keep-rows")
        return " ".join(parts)


def tier_entries(registry: Registry, tier: str, only: list[str] | None = None) -> list[str]:
    """The entries whose ``tier`` is ``tier``, in registry order; ``only`` narrows them down."""
    if tier not in TIERS:
        raise ConfigError(f"--tier: expected one of {', '.join(TIERS)}, got {tier!r}{suggest(tier, TIERS)}")
    names = [n for n, raw in registry.entries.items() if isinstance(raw.body, dict) and raw.body.get("tier") == tier]
    if only:
        for name in only:
            try:
                raw = registry.raw(name)
            except ConfigError as exc:
                raise ConfigError(f"--only {name}: {exc}") from None
            if name not in names:
                theirs = raw.body.get("tier") if isinstance(raw.body, dict) else None
                raise ConfigError(f"--only {name}: entry '{name}' is not in the {tier} tier "
                                  f"(its tier: {theirs or 'none'}; {raw.source})")
        names = [n for n in names if n in only]
    if not names:
        raise ConfigError(f"no registry entry has 'tier: {tier}'")
    return names


def _training_part(config: dict) -> dict:
    return {k: config.get(k) for k in TRAINING_SECTIONS}


def _saved_config(zoo, run_dir: Path) -> dict | None:
    """A run's config.yaml resolved again with today's defaults; None if unreadable or invalid now."""
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        body = {k: v for k, v in saved.items() if k not in ("entry", "source")}
        return resolve_entry(saved["entry"], body, f"{run_dir / 'config.yaml'}", saved.get("source", ""),
                             zoo.plugins)
    except (OSError, yaml.YAMLError, ZooError, AttributeError, KeyError, TypeError):
        return None


def find_reusable(zoo, base: Path, config: dict) -> tuple[Path, bool] | None:
    """The newest finished run under ``base`` trained with ``config``: (run directory, eval settings equal)."""
    finished = [p for p in base.glob("*") if (p / "metrics.json").is_file() and (p / "checkpoints" / LAST).is_file()]
    for run_dir in sorted(finished, key=lambda p: (p / "metrics.json").stat().st_mtime, reverse=True):
        saved = _saved_config(zoo, run_dir)
        if saved is not None and _training_part(saved) == _training_part(config):
            return run_dir, saved["eval"] == config["eval"]
    return None


def _reuse(zoo, run_dir: Path, same_eval: bool, config: dict, opts: BenchOptions) -> tuple[dict, str]:
    """metrics.json of a finished run; evaluated again when the entry's eval settings changed."""
    from zoo_core.runner import RunOptions, evaluate

    metrics = json.loads((run_dir / "metrics.json").read_text())
    how = f"reused {run_dir}"
    if not same_eval:
        results = _earlier_evaluation(run_dir, config)
        if results is not None:
            how += f" (with its earlier evaluation {results['_file']}, made with the entry's eval settings)"
            results.pop("_file")
        else:
            overrides = [f"eval.{k}={json.dumps(v)}" for k, v in config["eval"].items()]
            results = evaluate(zoo, str(run_dir), RunOptions(overrides=overrides, registry_files=opts.registry_files,
                                                        accelerator=opts.accelerator, data_dir=opts.data_dir,
                                                        progress=opts.progress))
            how += " (evaluated again: its eval settings differ from the entry's)"
        for split in ("train", "val", "test"):
            metrics.pop(split, None)
        metrics.update({k: v for k, v in results.items() if k not in ("entry", "family", "checkpoint", "expected", "eval")})
    metrics["expected"] = check_expected(config["expected"], metrics)  # the registry's expectations now
    return metrics, how


def _earlier_evaluation(run_dir: Path, config: dict) -> dict | None:
    """A ``zoo eval`` result in ``run_dir`` made with exactly the entry's eval settings, after the
    run's last checkpoint was written; None if there is none."""
    path = run_dir / f"eval_{'_'.join(config['eval']['splits'])}.json"
    try:
        results = json.loads(path.read_text())
        fresh = path.stat().st_mtime >= (run_dir / "checkpoints" / LAST).stat().st_mtime
    except (OSError, ValueError):
        return None
    if not fresh or results.get("eval") != config["eval"]:
        return None
    return {**results, "_file": path.name}


def kept_rows(previous: Path, tier_names: list[str], new_rows: list[dict]) -> list[dict]:
    """``--keep-rows``: the tier's rows in registry order, the entries run now from ``new_rows``
    and the others from the earlier leaderboard at ``previous`` (if it has them), each row keeping
    the date it was measured (``measured``; the earlier board's date for rows written before rows
    carried their own) and, for kept rows, the command that measured them (``kept_from``)."""
    try:
        old = json.loads(previous.read_text()) if previous.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ZooError(f"--keep-rows: cannot read the earlier leaderboard {previous} ({exc})") from None
    if not isinstance(old, dict) or not isinstance(old.get("rows", []), list):
        raise ZooError(f"--keep-rows: {previous} is not a leaderboard.json (expected an object with 'rows')")
    earlier = {r.get("entry"): r for r in old.get("rows", []) if isinstance(r, dict)}
    now = {r["entry"]: r for r in new_rows}
    out = []
    for name in tier_names:
        if name in now:
            out.append(now[name])
        elif name in earlier:
            row = dict(earlier[name])
            row.setdefault("measured", old.get("date"))
            row.setdefault("kept_from", old.get("command"))
            out.append(row)
    return out


def run(zoo, opts: BenchOptions, log: Callable[[str], None] = print) -> dict:
    """Train (or reuse) every entry of the tier, write the leaderboard; returns it."""
    from zoo_core.runner import RunOptions, runs_root, train
    from zoo_core.runner.train import Interrupted

    zoo = zoo.with_registry(opts.registry_files)
    registry = zoo.registry
    names = tier_entries(registry, opts.tier, opts.only)
    configs = {name: registry.resolve(name) for name in names}  # every entry valid before any training
    out = Path(opts.out or Path("bench") / opts.tier)
    if opts.readme and not Path(opts.readme).is_file():
        raise ZooError(f"--readme {opts.readme}: no such file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ZooError(f"--out {out}: cannot create the directory ({exc.strerror or exc})") from None
    run_opts = RunOptions(registry_files=opts.registry_files, runs_dir=opts.runs_dir, data_dir=opts.data_dir,
                          accelerator=opts.accelerator, progress=opts.progress)
    rows = []
    for i, name in enumerate(names, 1):
        config = configs[name]
        start = time.perf_counter()
        metrics, error = None, None
        try:
            found = find_reusable(zoo, runs_root(run_opts) / name, config) if opts.reuse else None
            if found is not None:
                metrics, how = _reuse(zoo, found[0], found[1], config, opts)
            else:
                how = "trained"
                metrics = train(zoo, name, run_opts)
        except Interrupted as exc:  # a signal stops the bench, not just this entry; nothing is overwritten
            raise Interrupted(f"zoo bench stopped at entry {i} of {len(names)} ({name}): {exc}; the leaderboard "
                              f"in {out} was not rewritten; run the same command with --reuse to continue from "
                              f"the finished runs") from None
        except ZooError as exc:
            how, error = "failed", str(exc)
        except Exception as exc:  # one entry's bug must not lose the others' results
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            how, error = "failed", f"internal error: {type(exc).__name__}: {first}"
        seconds = time.perf_counter() - start
        row = leaderboard.make_row(zoo, name, config, metrics, how, error, round(seconds, 1))
        rows.append(row)
        log(f"[{i}/{len(names)}] {name}: {how}" + (f": {error}" if error else "") + f" ({seconds:.1f} s)")
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for row in rows:
        row["measured"] = date
    if opts.keep_rows:
        rows = kept_rows(out / "leaderboard.json", tier_entries(registry, opts.tier), rows)
    long, short = leaderboard.machine_description()
    split = next((r["split"] for r in rows if r["split"]), "test")
    board = {"tier": opts.tier, "command": opts.command(), "date": date,
             "machine": long, "machine_short": short, "split": split,
             "split_note": (f"{split}-set means per example in nats (± standard error) and bits/dim of the "
                            "original discrete data where the data are discrete"),
             "rows": rows}
    leaderboard.save_picture(board, out / "leaderboard.png")  # first: the step most likely to fail
    (out / "leaderboard.json").write_text(json.dumps(leaderboard.sanitize_for_json(board), indent=2) + "\n")
    (out / "leaderboard.md").write_text(leaderboard.render_markdown(board, picture="leaderboard.png"))
    if opts.readme:
        readme = Path(opts.readme)
        picture = os.path.relpath((out / "leaderboard.png").resolve(), readme.resolve().parent)
        leaderboard.replace_in_readme(readme, opts.tier, leaderboard.render_markdown(board, title=False, picture=picture))
    failed = [r for r in rows if r["error"]]
    if failed:
        raise ZooError(f"zoo bench: {len(failed)} of {len(rows)} entries failed ("
                       + "; ".join(f"{r['entry']}: {r['error']}" for r in failed)
                       + f"); the leaderboard in {out} shows them as failed")
    return board
