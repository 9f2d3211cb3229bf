"""The ``zoo`` command: list, plugins, train, eval, sample.

User errors print one line on stderr and exit 1 (2 for bad usage); ``--verbose`` shows tracebacks.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback

from zoo_core.errors import ZooError

EPILOG = "Docs: README.md. Environment: ZOO_DATA_DIR, ZOO_RUNS_DIR, ZOO_REGISTRY, ZOO_BLOCK_PLUGINS."


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line."""

    #: a callable giving the epilog when help is shown (so that plugins load only for --help)
    lazy_epilog = None

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def format_help(self) -> str:
        if self.lazy_epilog is not None:
            self.epilog = self.lazy_epilog()
        return super().format_help()


def _metrics_epilog() -> str:
    """The registered metrics (zoo's and plugins'), one line each, for 'zoo eval --help'."""
    import textwrap

    from zoo_core.registry import EVAL_DEFAULTS

    try:
        from zoo_core.plugins import get_plugins

        metrics = get_plugins().metrics
    except Exception as exc:  # help must still print
        return f"metrics: could not load the plugins ({exc})"
    lines = textwrap.wrap(f"metrics (choose with --set eval.metrics=[a,b]; default "
                          f"{','.join(EVAL_DEFAULTS['metrics'])}; each runs only where it applies):", width=100)
    width = max((len(name) for name in metrics), default=0)
    for name, reg in sorted(metrics.items()):
        doc = (reg.obj.__doc__ or "").strip().splitlines()
        summary = getattr(reg.obj, "summary", "") or (doc[0] if doc else "")
        lines += textwrap.wrap(f"{name:<{width}}  {summary} [{reg.plugin}]", width=100, initial_indent="  ",
                               subsequent_indent=" " * (width + 4))
    return "\n".join(lines)


def _devices(text: str):
    if text == "auto":
        return "auto"
    if text.isdigit():
        return int(text)
    if all(p.strip().isdigit() for p in text.split(",") if p.strip()):
        return [int(p) for p in text.split(",") if p.strip()]
    raise argparse.ArgumentTypeError(f"expected a number of devices, a list like 0,1, or auto; got '{text}'")


def _positive(text: str) -> int:
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return int(text)


def _add_hardware(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hardware (Lightning Trainer)")
    g.add_argument("--accelerator", default="auto", help="cpu, gpu, mps or auto (default: auto)")
    g.add_argument("--devices", type=_devices, default=None,
                   help="devices per node: N, a list like 0,1, or auto (default 1; under torchrun/SLURM from the launcher)")
    g.add_argument("--num-nodes", type=_positive, default=None, help="number of machines (default 1)")
    g.add_argument("--strategy", default=None, help="Lightning strategy (default: ddp when more than one device)")
    g.add_argument("--data-dir", default=None, help="where datasets live (else $ZOO_DATA_DIR, else ~/.cache/zoo/data)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zoo", description="A zoo of generative models: train, evaluate and compare them.",
                     epilog=EPILOG)
    parser.add_argument("--verbose", "-v", action="store_true", help="show tracebacks and Lightning's output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("list", help="families (with their likelihood kind) and registry entries")
    p.add_argument("--registry", action="append", default=[], metavar="FILE", help="extra registry file(s)")

    sub.add_parser("plugins", help="installed plugins: name, version, hooks, problems")

    p = sub.add_parser("train", help="train a registry entry, then evaluate it and draw samples",
                       description="Writes runs/ENTRY/VERSION/: config.yaml, checkpoints/, logs/, metrics.json, "
                                   "samples.png.")
    p.add_argument("entry", help="registry entry name ('zoo list' shows them)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set train.max_epochs=3 --set model.latent_dim=32")
    p.add_argument("--registry", action="append", default=[], metavar="FILE", help="extra registry file(s)")
    p.add_argument("--max-epochs", type=_positive, default=None)
    p.add_argument("--max-steps", type=_positive, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--precision", default=None, help="32-true, bf16-mixed, 16-mixed, ...")
    p.add_argument("--runs-dir", default=None, help="where runs are written (default: $ZOO_RUNS_DIR or ./runs)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN_OR_CKPT",
                   help="continue the latest run of ENTRY, or the given run directory / checkpoint")
    p.add_argument("--wandb", action="store_true",
                   help="also log to Weights & Biases (offline unless wandb is configured for online use)")
    _add_hardware(p)

    p = sub.add_parser("eval", help="evaluate a run directory or checkpoint",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Evaluates the entry's eval.metrics on its eval.splits. NLL is per example in "
                                   "nats, and bits/dim\nof the original discrete data (exact for exact families; "
                                   "for bound families the bound is named,\ne.g. the importance-weighted bound "
                                   "with K samples, set by --set eval.iw_samples=K). Sample metrics\nuse "
                                   "eval.quality_samples samples; metrics.json keeps metric_descriptions, one line "
                                   "each on\nwhat was measured.")
    p.lazy_epilog = _metrics_epilog
    p.add_argument("run", help="run directory (runs/ENTRY/VERSION) or .ckpt file")
    p.add_argument("--split", action="append", choices=["train", "val", "test"], default=None,
                   help="split(s) to evaluate (default: the entry's eval.splits)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE",
                   help="change evaluation settings, e.g. --set eval.iw_samples=5000")
    _add_hardware(p)

    p = sub.add_parser("new", help="start a new family as a separately installable plugin package",
                       description="Writes DIR/zoo-NAME/: pyproject (entry point), a working GenerativeModel "
                                   "subclass to edit, registry entries, and tests that run the conformance kit.")
    p.add_argument("kind", choices=["family"], help="what to create")
    p.add_argument("name", help="family name: lower case letters, digits, underscores")
    p.add_argument("--dir", default=".", help="where to create zoo-NAME/ (default: here)")

    p = sub.add_parser("sample", help="draw samples from a run directory or checkpoint")
    p.add_argument("run", help="run directory or .ckpt file")
    p.add_argument("-n", type=_positive, default=64, help="number of samples (default 64)")
    p.add_argument("-o", "--output", required=True, help="output file: .png picture, .pt tensor or .npy array")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("export", help="write a run's weights as safetensors with its config (no pickle to load)",
                       description="Writes DIR/model.safetensors, DIR/config.yaml (family, data spec, constructor "
                                   "arguments, run configuration) and DIR/manifest.json (zoo version, family, "
                                   "plugin, entry, sha256 of the files). 'zoo eval DIR' and 'zoo sample DIR' "
                                   "rebuild the model from these files alone.")
    p.add_argument("run", help="run directory, .ckpt file or export directory")
    p.add_argument("-o", "--output", default=None, metavar="DIR",
                   help="export directory (default: RUN_DIR/export, or CKPT-export beside a lone checkpoint)")

    p = sub.add_parser("bench", help="train and evaluate every entry of a tier, write the leaderboard",
                       description="Trains (or with --reuse takes finished runs of) every registry entry with "
                                   "'tier: TIER', one after another, and writes OUT/leaderboard.md, leaderboard.json "
                                   "and leaderboard.png: NLL in nats and bits/dim with the bound named, sample "
                                   "quality with its data floor, training time, epochs and each expected result.")
    p.add_argument("--tier", required=True, choices=["quick", "full"],
                   help="quick: toy 2-D and 8x8 digits entries of every family (minutes on a CPU); "
                        "full: the MNIST entries (hours on a CPU)")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default: bench/TIER/)")
    p.add_argument("--runs-dir", default=None, help="where runs are written and looked for (default: $ZOO_RUNS_DIR or ./runs)")
    p.add_argument("--readme", default=None, metavar="README.md",
                   help="replace the text between <!-- leaderboard:TIER:begin --> and <!-- leaderboard:TIER:end --> "
                        "in this file with the table")
    p.add_argument("--only", nargs="+", default=[], metavar="ENTRY", help="only these entries of the tier")
    p.add_argument("--reuse", action="store_true",
                   help="take a finished run trained with the same configuration instead of retraining "
                        "(evaluated again when only the eval settings differ)")
    p.add_argument("--registry", action="append", default=[], metavar="FILE", help="extra registry file(s)")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu, mps or auto (default: auto)")
    p.add_argument("--data-dir", default=None, help="where datasets live (else $ZOO_DATA_DIR, else ~/.cache/zoo/data)")
    p.add_argument("--progress", action="store_true", help="show Lightning's progress bars")
    return parser


def _options(args):
    from zoo_core.runner import RunOptions

    return RunOptions(
        overrides=getattr(args, "overrides", []), registry_files=getattr(args, "registry", []),
        accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes, strategy=args.strategy,
        precision=getattr(args, "precision", None), max_epochs=getattr(args, "max_epochs", None),
        max_steps=getattr(args, "max_steps", None), seed=getattr(args, "seed", None),
        runs_dir=getattr(args, "runs_dir", None), resume=getattr(args, "resume", None),
        wandb=getattr(args, "wandb", False), data_dir=args.data_dir, progress=not args.no_progress)


def _is_rank_zero() -> bool:
    from pytorch_lightning.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def cmd_list(args) -> None:
    from zoo_core.plugins import get_plugins
    from zoo_core.registry import Registry

    plugins = get_plugins()
    print("Families:")
    for name, reg in sorted(plugins.families.items()):
        cls = reg.obj
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"  {name:<16} likelihood={cls.likelihood:<6} plugin={reg.plugin:<10} {doc}")
    registry = Registry(args.registry, plugins)
    print("\nRegistry entries:")
    for name in registry.names():
        raw = registry.raw(name)
        body = raw.body if isinstance(raw.body, dict) else {}
        data = body.get("data") or {}
        data_name = data.get("name", "?") if isinstance(data, dict) else "?"
        print(f"  {name:<24} family={str(body.get('family', '?')):<10} data={data_name:<12} "
              f"{body.get('description', '')}")
    _warn_plugin_problems(plugins)


def _warn_plugin_problems(plugins) -> None:
    for line in plugins.problems():
        print(f"zoo: warning: {line}", file=sys.stderr)


def cmd_plugins(args) -> None:
    from zoo_core.plugins import get_plugins

    plugins = get_plugins()
    for info in plugins.plugins.values():
        print(f"{info.name:<12} {info.version:<10} {info.status:<8} dist={info.distribution:<18} "
              f"module={info.module}  hooks: {', '.join(info.hooks) or '-'}")
        for err in info.errors:
            print(f"    problem: {err}")


def cmd_train(args) -> None:
    from zoo_core.runner import train

    metrics = train(args.entry, _options(args))
    if _is_rank_zero():
        print(_summary(metrics))


def _summary(metrics: dict) -> str:
    from zoo_core.expected import summary_lines

    parts = [f"run: {metrics['run_dir']}", f"wall {metrics['wall_time_s']:.1f}s"]
    for split in ("val", "test"):
        if split in metrics and "nll_nats" in metrics[split]:
            r = metrics[split]
            parts.append(f"{split} NLL {r['nll_nats']:.3f} nats ({r['bits_per_dim']:.4f} bits/dim)")
    return "\n".join(["  ".join(parts), *summary_lines(metrics.get("expected") or [])])


def cmd_eval(args) -> None:
    from zoo_core.runner import evaluate

    results = evaluate(args.run, _options(args), splits=args.split)
    if _is_rank_zero():
        print(json.dumps(results, indent=2))
        from zoo_core.expected import summary_lines

        for line in summary_lines(results.get("expected") or []):  # stderr: stdout stays one JSON document
            print(line.strip(), file=sys.stderr)


def cmd_bench(args) -> None:
    from zoo_core.bench import BenchOptions, run

    board = run(BenchOptions(tier=args.tier, out=args.out, runs_dir=args.runs_dir, readme=args.readme,
                             only=args.only, reuse=args.reuse, registry_files=args.registry,
                             data_dir=args.data_dir, accelerator=args.accelerator, progress=args.progress))
    out = args.out or f"bench/{args.tier}"
    print(f"wrote {out}/leaderboard.md, leaderboard.json, leaderboard.png ({len(board['rows'])} entries)"
          + (f"; updated {args.readme}" if args.readme else ""))


def cmd_sample(args) -> None:
    from zoo_core.runner import sample

    out = sample(args.run, args.n, args.output, seed=args.seed)
    print(f"wrote {args.n} samples to {out}")


def cmd_export(args) -> None:
    from zoo_core.export import export_model

    out = export_model(args.run, args.output)
    print(f"exported to {out} (model.safetensors, config.yaml, manifest.json)")


def cmd_new(args) -> None:
    from zoo_core.scaffold import new_family

    target = new_family(args.name, args.dir)
    print(f"created {target}\nnext: pip install -e {target} && python -m pytest {target} -q && "
          f"zoo train {args.name}-moons")


COMMANDS = {"list": cmd_list, "plugins": cmd_plugins, "train": cmd_train, "eval": cmd_eval, "sample": cmd_sample,
            "new": cmd_new, "export": cmd_export}

COMMANDS["bench"] = cmd_bench


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command](args)
        return 0
    except ZooError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"zoo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: still one line unless --verbose
        if args.verbose:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"zoo: internal error: {type(exc).__name__}: {first} (run with --verbose for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
