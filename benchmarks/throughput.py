"""Training throughput of the shared runner against a hand-written PyTorch loop (same process).

For each entry, ``--repeats`` rounds; each round trains a fresh, identically seeded model once
with each arm: the runner's Trainer (``runner``) and the plain loop (``plain``), plus with
``--before`` the runner as it was before the logging change (``runner-log-every-step``:
``self.log`` of the training loss on every step). The order of the arms rotates between rounds,
so slow drifts of a shared machine hit all arms alike. What is timed: see ``_common.py``.

Printed per arm: steps/s of wall time and steps per CPU-second of this process (median
[min-max] over rounds), and the ratio runner/plain as the median of the per-round ratios.
On a CPU the CPU-time ratio is the one to read while other processes load the machine
(wall time then measures the scheduler as much as the code); on CUDA only wall time means
anything (the host waits for the GPU).

    OMP_NUM_THREADS=1 python benchmarks/throughput.py --entries vae-mnist gmm-moons flow-moons
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (sets OMP_NUM_THREADS before torch is imported)

from zoo_core.model import GenerativeModel  # noqa: E402

#: runner/plain targets: large models hide per-step overhead, small 2-D models expose it
TARGETS = {"vae-mnist": 0.97}
DEFAULT_TARGET = 0.85
DEFAULT_STEPS = {"vae-mnist": 300}
#: settings of an entry's arms: gmm-moons fits by EM (closed form, a handful of full-batch
#: iterations; against scikit-learn in gmm_vs_sklearn.py), so its gradient fit is timed here
ENTRY_OVERRIDES = {"gmm-moons": ("model.fit=gradient", "train.batch_size=500")}
BEFORE = "runner-log-every-step"
FUSED = "runner-fused-"



def _run_arm(arm: str, config: dict, device, warmup: int, progress: bool, data_dir):
    if arm == "plain":
        return _common.run_plain(config, device, warmup, data_dir=data_dir)
    if arm == BEFORE:  # training_step as it was: self.log on every step
        original = GenerativeModel.logs_this_step
        GenerativeModel.logs_this_step = lambda self: True
        try:
            return _common.run_runner(config, device, warmup, progress=progress, data_dir=data_dir)
        finally:
            GenerativeModel.logs_this_step = original
    return _common.run_runner(config, device, warmup, progress=progress, data_dir=data_dir)


def measure(entry: str, steps: int, repeats: int, device, precision: str, progress: bool, before: bool,
            overrides: tuple[str, ...], data_dir: str | None, fused: tuple[int, ...] = ()) -> dict:
    overrides = (*ENTRY_OVERRIDES.get(entry, ()), *overrides)
    config = _common.resolve(entry, steps, precision, overrides)
    warmup = max(5, steps // 5)
    arms = ["runner", "plain"] + ([BEFORE] if before else []) + [f"{FUSED}{k}" for k in fused]
    configs = {arm: config for arm in arms}
    for k in fused:  # train.fused_steps=K: the same run, K optimiser steps per Lightning step
        configs[f"{FUSED}{k}"] = _common.resolve(entry, steps, precision, (*overrides, f"train.fused_steps={k}"))
    wall = {a: [] for a in arms}
    cpu = {a: [] for a in arms}
    for r in range(repeats):
        order = arms[r % len(arms):] + arms[:r % len(arms)]
        for arm in order:
            t = _run_arm(arm, configs[arm], device, warmup, progress, data_dir)
            wall[arm].append(t.steps_per_s)
            cpu[arm].append(t.steps_per_cpu_s)
        print(f"  {entry} round {r + 1}/{repeats}: " + ", ".join(
            f"{a} {wall[a][-1]:.1f} steps/s ({cpu[a][-1]:.1f} per CPU-s)" for a in arms), flush=True)
    target = TARGETS.get(entry, DEFAULT_TARGET)
    result = {"entry": entry, "steps": steps, "timed_steps": steps - warmup, "batch_size": config["train"]["batch_size"],
              "device": str(device), "precision": precision, "progress_bar": progress, "target": target,
              "steps_per_s": wall, "steps_per_cpu_s": cpu}
    for arm in arms[:1] + arms[2:]:
        key = "" if arm == "runner" else f"_{arm}"
        result[f"ratios_wall{key}"] = [a / b for a, b in zip(wall[arm], wall["plain"])]
        result[f"ratios_cpu{key}"] = [a / b for a, b in zip(cpu[arm], cpu["plain"])]
    primary = result["ratios_cpu"] if device.type == "cpu" else result["ratios_wall"]
    result["ratio"] = statistics.median(primary)
    result["ratio_kind"] = "CPU time" if device.type == "cpu" else "wall time"
    result["meets_target"] = result["ratio"] >= target
    return result


def _ratio(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", nargs="+", default=["vae-mnist", "gmm-moons", "flow-moons"])
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per run, the first fifth untimed (default: 300 for vae-mnist, 600 otherwise)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", default="32-true", choices=_common.SUPPORTED_PRECISIONS)
    p.add_argument("--progress", action="store_true", help="runner arms with the progress bar (zoo train's default)")
    p.add_argument("--before", action="store_true",
                   help=f"add the arm '{BEFORE}': the runner with the training loss logged on every step")
    p.add_argument("--fused", type=int, nargs="*", default=[], metavar="K",
                   help="add runner arms with train.fused_steps=K (K optimiser steps per Lightning step)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="registry override applied to every arm (e.g. train.batch_size=64)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    _common.quiet()
    device = _common.device_of(args.device)
    print(f"# throughput: runner (Lightning, build_trainer) vs plain PyTorch loop; {_common.machine_note()}", flush=True)
    results = []
    for entry in args.entries:
        steps = args.steps or DEFAULT_STEPS.get(entry, 600)
        results.append(measure(entry, steps, args.repeats, device, args.precision, args.progress, args.before,
                               tuple(args.overrides), args.data_dir, tuple(args.fused)))
    print(f"\n# steps/s: median [min-max] over {args.repeats} rounds (+-half range in % of the median)")
    for res in results:
        for arm in res["steps_per_s"]:
            print(f"{res['entry']:<12} {arm:<22} wall {_common.spread(res['steps_per_s'][arm]):<32} "
                  f"per CPU-s {_common.spread(res['steps_per_cpu_s'][arm])}")
    print("\n# runner/plain: median of the per-round ratios [min-max]")
    for res in results:
        line = (f"{res['entry']:<12} {res['device']:<5} {res['precision']:<10} wall {_ratio(res['ratios_wall'])}  "
                f"CPU {_ratio(res['ratios_cpu'])}")
        if f"ratios_cpu_{BEFORE}" in res:
            line += (f"  | before (log every step): wall {_ratio(res[f'ratios_wall_{BEFORE}'])}  "
                     f"CPU {_ratio(res[f'ratios_cpu_{BEFORE}'])}")
        for arm in (a for a in res["steps_per_s"] if a.startswith(FUSED)):
            line += f"  | {arm}: wall {_ratio(res[f'ratios_wall_{arm}'])}  CPU {_ratio(res[f'ratios_cpu_{arm}'])}"
        key = "ratios_cpu" if res["ratio_kind"] == "CPU time" else "ratios_wall"
        verdicts = []
        for arm in (a for a in res["steps_per_s"] if a == "runner" or a.startswith(FUSED)):
            ratio = statistics.median(res[key if arm == "runner" else f"{key}_{arm}"])
            verdicts.append(f"{arm}: {'met' if ratio >= res['target'] else 'MISSED'}")
        print(f"{line}  | target {res['ratio_kind']} >= {res['target']}: {', '.join(verdicts)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": _common.machine_note(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
