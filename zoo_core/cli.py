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


def _metrics_epilog(get_zoo) -> str:
    """The registered metrics (zoo's and plugins'), one line each, for 'zoo eval --help'."""
    import textwrap

    from zoo_core.registry import EVAL_DEFAULTS

    try:
        metrics = get_zoo().plugins.metrics
    except Exception as exc:  # help must still print
        return f"metrics: could not load the plugins ({exc})"
    lines = textwrap.wrap(f"metrics (choose with --set eval.metrics=[a,b]; default "
                          f"{','.join(EVAL_DEFAULTS['metrics'])}; each runs only where it applies):", width=100)
    width = max((len(name) for name in metrics), default=0)
    for name, reg in sorted(metrics.items()):
        try:
            summary = reg.meta("summary") or (reg.obj.summary or (reg.obj.__doc__ or "").strip().split("\n")[0])
        except Exception as exc:  # a broken metric plugin: still list it
            summary = f"(cannot load: {exc})"
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


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"expected an integer seed in [0, 2^32), got '{text}'")
    return value


def build_parser(get_zoo=None) -> argparse.ArgumentParser:
    """The ``zoo`` parser; ``get_zoo()`` gives the Zoo where help needs the plugins (``zoo eval --help``)."""
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
    p.add_argument("--seed", type=_seed, default=None)
    p.add_argument("--check", action="store_true",
                   help="exit 3 when a published, target or reproduction expectation of the entry fails")
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
    p.lazy_epilog = (lambda: _metrics_epilog(get_zoo)) if get_zoo is not None else None
    p.add_argument("run", help="run directory (runs/ENTRY/VERSION) or .ckpt file")
    p.add_argument("--split", action="append", choices=["train", "val", "test"], default=None,
                   help="split(s) to evaluate (default: the entry's eval.splits)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE",
                   help="change evaluation settings, e.g. --set eval.iw_samples=5000")
    p.add_argument("--registry", action="append", default=[], metavar="FILE", help="extra registry file(s)")
    p.add_argument("--check", action="store_true",
                   help="exit 3 when a published, target or reproduction expectation of the entry fails")
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
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--class", dest="class_", type=int, default=None, metavar="K",
                   help="conditional runs: draw samples of class K")
    p.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="conditional diffusion: classifier-free guidance scale (0: none)")
    p.add_argument("--force", action="store_true", help="allow more than 100000 samples")

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
    p.add_argument("--keep-rows", action="store_true",
                   help="with --only: the tier's other entries keep their rows from the existing OUT/leaderboard.json "
                        "(each shown with the date it was measured)")
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
        wandb=getattr(args, "wandb", False), data_dir=args.data_dir,
        progress=False if args.no_progress else None)


def _is_rank_zero() -> bool:
    from pytorch_lightning.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def cmd_list(args, zoo) -> None:
    from zoo_core.registry import entry_problems

    zoo = zoo.with_registry(args.registry)
    print("Families:")
    for name, reg in sorted(zoo.plugins.families.items()):
        print(f"  {_shown(name):<16} likelihood={str(reg.meta('likelihood', '?')):<6} plugin={_shown(reg.plugin):<10} "
              f"{_shown(reg.meta('summary', ''))}")
    registry = zoo.registry
    print("\nRegistry entries:")
    marked = 0
    for name in registry.names():
        raw = registry.raw(name)
        body = raw.body if isinstance(raw.body, dict) else {}
        data = body.get("data") or {}
        data_name = data.get("name", "?") if isinstance(data, dict) else "?"
        problems = entry_problems(zoo, name)
        marked += bool(problems)
        mark = "  ! " + "; ".join(problems) if problems else ""
        print(f"  {_shown(name):<24} family={_shown(body.get('family', '?')):<10} data={_shown(data_name):<12} "
              f"{_shown(body.get('description', ''))}{mark}")
    if marked:
        print(f"\n{marked} entr{'y is' if marked == 1 else 'ies are'} marked '!': they cannot run as written",
              file=sys.stderr)
    _warn_plugin_problems(zoo)


def _shown(value) -> str:
    """A name or text as printed: control and bidi characters escaped, never raw."""
    from zoo_core.errors import one_line

    text = one_line(str(value))
    return "".join(c if not (0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069) else f"\\u{ord(c):04x}"
                   for c in text)


def _warn_plugin_problems(zoo) -> None:
    for line in zoo.problems():
        print(f"zoo: warning: {_shown(line)}", file=sys.stderr)


def cmd_plugins(args, zoo) -> None:
    for info in zoo.plugins.plugins.values():
        print(f"{_shown(info.name):<12} {_shown(info.version):<10} {info.status:<8} dist={_shown(info.distribution):<18} "
              f"module={_shown(info.module)}  hooks: {', '.join(info.hooks) or '-'}")
        for err in info.errors:
            print(f"    problem: {_shown(err)}")


def cmd_train(args, zoo) -> int:
    from zoo_core.runner import train

    metrics = train(zoo, args.entry, _options(args))
    if _is_rank_zero():
        print(_summary(metrics))
    return _gate(args, metrics.get("expected") or [])


def _gate(args, rows: list[dict]) -> int:
    """--check: exit 3 when a published, target or reproduction expectation failed."""
    from zoo_core.expected import failures

    if not getattr(args, "check", False):
        return 0
    failed = failures(rows)
    if failed:
        print(f"zoo: check failed: {len(failed)} expectation(s) not met: "
              + "; ".join(f"{r['metric']} ({r['kind']})" for r in failed), file=sys.stderr)
        return 3
    return 0


def _summary(metrics: dict) -> str:
    from zoo_core.expected import summary_lines

    parts = [f"run: {metrics['run_dir']}", f"wall {metrics['wall_time_s']:.1f}s"]
    if metrics.get("hardware") and metrics["hardware"] != "1 process":
        parts.append(metrics["hardware"])
    for split in ("val", "test"):
        r = metrics.get(split) or {}
        if r.get("nll_nats") is not None:
            parts.append(f"{split} NLL {r['nll_nats']:.3f} nats ({r['bits_per_dim']:.4f} bits/dim)")
    return "\n".join(["  ".join(parts), *summary_lines(metrics.get("expected") or [])])


def cmd_eval(args, zoo) -> int:
    from zoo_core.runner import evaluate

    results = evaluate(zoo, args.run, _options(args), splits=args.split)
    if _is_rank_zero():
        print(json.dumps(results, indent=2))
        from zoo_core.expected import summary_lines

        for line in summary_lines(results.get("expected") or []):  # stderr: stdout stays one JSON document
            print(line.strip(), file=sys.stderr)
    return _gate(args, results.get("expected") or [])


def cmd_bench(args, zoo) -> None:
    from zoo_core.bench import BenchOptions, run

    board = run(zoo, BenchOptions(tier=args.tier, out=args.out, runs_dir=args.runs_dir, readme=args.readme,
                                  only=args.only, reuse=args.reuse, keep_rows=args.keep_rows,
                                  registry_files=args.registry,
                                  data_dir=args.data_dir, accelerator=args.accelerator, progress=args.progress))
    out = args.out or f"bench/{args.tier}"
    print(f"wrote {out}/leaderboard.md, leaderboard.json, leaderboard.png ({len(board['rows'])} entries)"
          + (f"; updated {args.readme}" if args.readme else ""))


def cmd_sample(args, zoo) -> None:
    from zoo_core.loading import load_model
    from zoo_core.runner import sample_to_file

    model, config, _ = load_model(args.run, zoo)
    context = None
    if args.class_ is not None:
        if not model.is_conditional:
            raise ZooError(f"--class {args.class_}: family '{model.family}' of this run is not conditional "
                           f"(entries named FAMILY-DATA-cond are)")
        context = args.class_
    if args.guidance is not None:
        if not hasattr(model, "guidance_scale"):
            raise ZooError(f"--guidance: family '{model.family}' has no guidance scale (classifier-free "
                           f"guidance is a diffusion option)")
        model.guidance_scale = args.guidance
    out = sample_to_file(model, config, args.n, args.output, seed=args.seed, context=context, force=args.force)
    print(f"wrote {args.n} samples to {out}")


def cmd_export(args, zoo) -> None:
    from zoo_core.export import export_model
    from zoo_core.loading import load_model

    out = export_model(zoo, args.run, args.output, loaded=load_model(args.run, zoo))
    print(f"exported to {out} (model.safetensors, config.yaml, manifest.json)")


def cmd_new(args, zoo) -> None:
    from zoo_core.scaffold import new_family

    target = new_family(zoo, args.name, args.dir)
    print(f"created {target}\nnext: pip install -e {target} && python -m pytest {target} -q && "
          f"zoo train {args.name}-moons")


COMMANDS = {"list": cmd_list, "plugins": cmd_plugins, "train": cmd_train, "eval": cmd_eval, "sample": cmd_sample,
            "new": cmd_new, "export": cmd_export, "bench": cmd_bench}


def _plugin_commands(parser, sub, zoo) -> None:
    """Subcommands that plugins add through the ``register_commands`` hook."""
    def register(name, configure, help=""):
        if name in COMMANDS or name in sub.choices:
            raise ValueError(f"command '{name}' is already taken")
        p = sub.add_parser(name, help=help)
        configure(p)
        if "run" not in p._defaults:
            raise ValueError(f"command '{name}': configure(parser) must set parser.set_defaults(run=...)")

    for name, info in zoo.plugins.plugins.items():
        if "register_commands" not in info.hooks:
            continue
        others = [p for n, p in zoo.plugins.pm.list_name_plugin() if n != name and p is not None]
        try:
            zoo.plugins.pm.subset_hook_caller("register_commands", remove_plugins=others)(register=register)
        except Exception as exc:
            info.errors.append(f"register_commands raised {type(exc).__name__}: {exc}")
            info.status = "problem"


def main(argv: list[str] | None = None, zoo=None) -> int:
    """Run one ``zoo`` command. ``zoo`` (a :class:`zoo_core.zoo.Zoo`) is built here unless given."""
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = any(a in ("-v", "--verbose") for a in argv[:1])
    built = {"zoo": zoo}

    def get_zoo():
        if built["zoo"] is None:
            from zoo_core.zoo import Zoo

            built["zoo"] = Zoo()
        return built["zoo"]

    parser = build_parser(get_zoo)
    try:
        if _needs_plugins(argv):
            _plugin_commands(parser, parser._subparsers._group_actions[0], get_zoo())
        args = parser.parse_args(argv)
        verbose = args.verbose
        zoo = get_zoo()
        code = (args.run(args, zoo) if args.command not in COMMANDS else COMMANDS[args.command](args, zoo))
        sys.stdout.flush()
        return int(code or 0)
    except BrokenPipeError:  # zoo list | head: the reader left; not an error
        _silence_stdout()
        return 0
    except ZooError as exc:
        if verbose:
            traceback.print_exc()
        print(f"zoo: error: {_with_provider(exc, built['zoo'])}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130
    except RecursionError:
        print("zoo: error: input nested too deeply (a registry or override deeper than Python's recursion "
              "limit)", file=sys.stderr)
        return 1
    except Exception as exc:  # an unexpected failure: still one line unless --verbose
        if verbose:
            raise
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        print(f"zoo: internal error (a bug; please report it): {type(exc).__name__}: {first} "
              f"(run with --verbose for the traceback)", file=sys.stderr)
        return 1


def _needs_plugins(argv: list[str]) -> bool:
    """Whether parsing needs plugin commands: an unknown first word may be a plugin's subcommand."""
    words = [a for a in argv if not a.startswith("-")]
    return bool(words) and words[0] not in COMMANDS


def _with_provider(exc: ZooError, zoo) -> str:
    """An interface violation, prefixed with the plugin that provides the family."""
    from zoo_core.errors import InterfaceError

    if isinstance(exc, InterfaceError) and zoo is not None and exc.family in zoo.plugins.families:
        return f"{zoo.describe_family(exc.family)}, {exc}"
    return str(exc)


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
