"""Peak memory of a training run: the shared runner against the plain PyTorch loop.

Each measurement is a fresh process (``--child``) that builds the entry's datamodule and model,
trains ``--steps`` steps with one arm (``_common.run_runner`` / ``_common.run_plain``, the same
code the throughput benchmark times) and reports:

- CPU: the peak resident set size of the whole process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``,
  which loading MNIST may set before training starts), and the peak during training alone:
  Linux's high-water mark (``VmHWM``) is reset when the model and data are built (writing 5 to
  ``/proc/self/clear_refs``) and read at the end, next to the RSS at that reset;
- CUDA: ``torch.cuda.max_memory_allocated`` from the moment training starts (the model is
  still on the host then), i.e. the tensors of the training run only.

The runner's run includes what ``build_trainer`` sets up (CSV logger, checkpoint callbacks,
which write nothing here since validation is off) and Lightning's sanity check (two
validation batches before training). Arms alternate over ``--repeats`` rounds; medians printed.

    OMP_NUM_THREADS=1 python benchmarks/memory.py --entries vae-mnist gmm-moons flow-moons
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process from /proc/self/status, in MB (nan where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def child(args) -> None:
    sys.path.insert(0, str(HERE))
    import _common
    import torch

    _common.quiet()
    device = _common.device_of(args.device)
    config = _common.resolve(args.entry, args.steps, args.precision)
    seen: dict[str, float] = {}

    def on_built(model) -> None:
        seen["rss_before_mb"] = _status_mb("VmRSS")
        seen["training_peak_valid"] = _reset_peak_rss()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    run = _common.run_runner if args.child == "runner" else _common.run_plain
    run(config, device, max(1, args.steps // 5), data_dir=args.data_dir, on_built=on_built)
    out = {**seen, "rss_peak_mb": _rss_mb(),
           "rss_training_peak_mb": _status_mb("VmHWM") if seen["training_peak_valid"] else float("nan")}
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    print("RESULT " + json.dumps(out), flush=True)


def run_child(arm: str, entry: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", arm, "--entry", entry, "--steps", str(args.steps),
           "--device", args.device, "--precision", args.precision]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{arm} run of {entry} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", nargs="+", default=["vae-mnist", "gmm-moons", "flow-moons"])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--child", choices=("runner", "plain"), help=argparse.SUPPRESS)
    p.add_argument("--entry", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    keys = ["rss_peak_mb", "rss_before_mb", "rss_training_peak_mb"] + (["cuda_peak_mb"] if args.device == "cuda" else [])
    print(f"# peak memory: runner vs plain loop, {args.steps} steps, fresh process per run, device {args.device}", flush=True)
    results = []
    for entry in args.entries:
        got = {"runner": [], "plain": []}
        for r in range(args.repeats):
            for arm in (("runner", "plain") if r % 2 == 0 else ("plain", "runner")):
                got[arm].append(run_child(arm, entry, args))
        med = {arm: {k: statistics.median(run[k] for run in runs) for k in keys} for arm, runs in got.items()}
        res = {"entry": entry, "steps": args.steps, "device": args.device, "precision": args.precision,
               "runs": got, "median": med}
        results.append(res)
        spread = {arm: max(r["rss_training_peak_mb"] for r in runs) - min(r["rss_training_peak_mb"] for r in runs)
                  for arm, runs in got.items()}
        run, plain = med["runner"], med["plain"]
        line = (f"{entry:<12} peak RSS during training: runner {run['rss_training_peak_mb']:.0f} MB, plain "
                f"{plain['rss_training_peak_mb']:.0f} MB, ratio {run['rss_training_peak_mb'] / plain['rss_training_peak_mb']:.3f} "
                f"(spread {spread['runner']:.0f}/{spread['plain']:.0f} MB; RSS when training started "
                f"{run['rss_before_mb']:.0f}/{plain['rss_before_mb']:.0f} MB); whole-process peak "
                f"{run['rss_peak_mb']:.0f}/{plain['rss_peak_mb']:.0f} MB")
        if args.device == "cuda":
            line += (f"; CUDA peak runner {med['runner']['cuda_peak_mb']:.1f} MB, plain {med['plain']['cuda_peak_mb']:.1f} MB, "
                     f"ratio {med['runner']['cuda_peak_mb'] / max(med['plain']['cuda_peak_mb'], 1e-9):.2f}")
        print(line, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
