"""Two CPU cores for one training run: one process with two intra-op threads, or two DDP processes
with one thread each? Side by side, through the ``zoo train`` command a user runs.

Arms (each a fresh ``python -m zoo_core train ENTRY`` process, interleaved, order rotating):

- ``1x2``: one process, ``OMP_NUM_THREADS=2`` (two intra-op threads), batch B;
- ``2x1``: ``--devices 2 --accelerator cpu`` (Lightning DDP over gloo; the runner gives each process
  ``cpu_count // 2`` threads), batch B per process, so 2B examples per optimiser step.

Each arm runs ``--max-steps`` S and S0 steps with no validation, no evaluation and no pictures
(``eval.splits=[]``). The difference of the two wall (and CPU) times is the cost of S - S0 steps
without start-up (imports, process group, data loading), and the figure is training examples per
second: (S - S0) x B x processes / difference (wall time only: using both cores is the point,
and the DDP workers' CPU time is not reliably counted as this process's children's). The 2x1 arm doubles the global batch, so it is also a
different optimisation (fewer, larger steps per epoch); this measures throughput only.

    ZOO_DATA_DIR=../shared/data python benchmarks/threads.py --entries vae-mnist autoregressive-mnist
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ARMS = {"1x2": {"env": {"OMP_NUM_THREADS": "2"}, "args": [], "processes": 1},
        "2x1": {"env": {}, "args": ["--devices", "2", "--accelerator", "cpu"], "processes": 2}}


def timed_train(entry: str, arm: str, steps: int, runs_dir: str) -> float:
    """Wall seconds of one ``zoo train`` of ``steps`` steps in ``arm``."""
    spec = ARMS[arm]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(spec["env"], WANDB_MODE="offline")
    cmd = [sys.executable, "-m", "zoo_core", "train", entry, "--max-steps", str(steps), "--no-progress",
           "--runs-dir", runs_dir, "--set", "train.check_val_every_n_epoch=100000", "--set", "eval.splits=[]",
           *spec["args"]]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{entry} {arm}: zoo train failed (exit {proc.returncode}): {proc.stderr[-800:]}")
    return wall


def batch_size(entry: str) -> int:
    from zoo_core.api import default_zoo

    return int(default_zoo().resolve(entry)["train"]["batch_size"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", nargs="+", default=["vae-mnist", "autoregressive-mnist"])
    parser.add_argument("--steps", type=int, default=300, help="steps of the long run (per process)")
    parser.add_argument("--base-steps", type=int, default=20, help="steps of the short run subtracted from it")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.steps <= args.base_steps:
        raise SystemExit("--steps must exceed --base-steps")
    print(f"cores: {os.cpu_count()}; {args.rounds} rounds of {args.steps} - {args.base_steps} steps per process")
    with tempfile.TemporaryDirectory() as runs_dir:
        for entry in args.entries:
            b = batch_size(entry)
            rates: dict[str, list[float]] = {arm: [] for arm in ARMS}
            for r in range(args.rounds):
                order = list(ARMS) if r % 2 == 0 else list(reversed(ARMS))
                for arm in order:
                    long_wall = timed_train(entry, arm, args.steps, runs_dir)
                    short_wall = timed_train(entry, arm, args.base_steps, runs_dir)
                    examples = (args.steps - args.base_steps) * b * ARMS[arm]["processes"]
                    rates[arm].append(examples / (long_wall - short_wall))
            for arm, walls in rates.items():
                print(f"{entry} {arm}: {statistics.median(walls):.0f} examples/s wall [{min(walls):.0f}-{max(walls):.0f}]")
            ratio = [a / c for a, c in zip(rates["2x1"], rates["1x2"])]
            print(f"{entry}: 2x1 / 1x2 examples per wall second = {statistics.median(ratio):.2f} "
                  f"[{min(ratio):.2f}-{max(ratio):.2f}] (batch {b} per process)")


if __name__ == "__main__":
    main()
