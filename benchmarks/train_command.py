"""Where a whole ``zoo train ENTRY`` command spends its time, start-up to summary line.

Each round runs, in fresh processes and rotating order: ``import torch``; ``import torch`` and
build one Adam optimiser (what any PyTorch training script pays before its first step: building
a torch optimiser imports ``torch._dynamo``); ``import pytorch_lightning`` (the floor every
``zoo train`` pays, since a family is a LightningModule) and the whole ``zoo train ENTRY
--no-progress`` in a temporary runs directory. It reads each one's wall
time and child CPU time (``resource.getrusage``), and the command's fit time from its
metrics.json (``wall_time_s``: ``trainer.fit``, from the Trainer's set-up to the last checkpoint).
Printed: medians over rounds, the ratio command / fit, and the command split into the Lightning
import, the fit and the rest (the zoo's own imports, registry, data, evaluation, picture, files).

    OMP_NUM_THREADS=1 python benchmarks/train_command.py --entry gmm-moons --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


#: the start-up of any PyTorch training script: torch, and the torch._dynamo import an optimiser triggers
TORCH_OPTIMISER = "import torch + optimiser"
#: what each fresh-process arm other than the command itself runs (``python -c``)
SNIPPETS = {"import torch": "import torch",
            TORCH_OPTIMISER: "import torch; torch.optim.Adam(torch.nn.Linear(2, 2).parameters())",
            "import pytorch_lightning": "import pytorch_lightning"}


def timed(args: list[str], cwd: str) -> tuple[float, float]:
    """(wall s, child CPU s) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"python {' '.join(args)} failed: {proc.stderr[-800:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entry", default="gmm-moons")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    arms = [*SNIPPETS, "zoo train"]
    wall = {a: [] for a in arms}
    cpu = {a: [] for a in arms}
    fit = []
    print(f"# {args.entry}: fresh processes, {args.rounds} rounds; load average {os.getloadavg()[0]:.2f}", flush=True)
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="zoo-train-command-") as tmp:
            for arm in arms[r % len(arms):] + arms[:r % len(arms)]:
                if arm == "zoo train":
                    w, c = timed(["-m", "zoo_core", "train", args.entry, "--no-progress", "--runs-dir", tmp], tmp)
                    metrics = json.loads(next(Path(tmp).glob("*/version_*/metrics.json")).read_text())
                    fit.append(metrics["wall_time_s"])
                else:
                    w, c = timed(["-c", SNIPPETS[arm]], tmp)
                wall[arm].append(w)
                cpu[arm].append(c)
        print(f"  round {r + 1}: " + ", ".join(f"{a} {wall[a][-1]:.2f} s ({cpu[a][-1]:.2f} CPU-s)" for a in arms)
              + f", fit {fit[-1]:.2f} s", flush=True)
    med = {a: statistics.median(wall[a]) for a in arms}
    med_cpu = {a: statistics.median(cpu[a]) for a in arms}
    fit_s = statistics.median(fit)
    command, lightning = med["zoo train"], med["import pytorch_lightning"]
    print(f"\n# medians (wall; CPU in brackets)")
    for a in arms:
        print(f"{a:<26} {med[a]:.2f} s ({med_cpu[a]:.2f} CPU-s)  [{min(wall[a]):.2f}-{max(wall[a]):.2f}]")
    print(f"{'fit (trainer.fit)':<26} {fit_s:.2f} s  [{min(fit):.2f}-{max(fit):.2f}]")
    print(f"\ncommand / fit: {command / fit_s:.1f}x (medians; per round "
          f"{', '.join(f'{w / f:.1f}' for w, f in zip(wall['zoo train'], fit))})")
    rest = command - lightning - fit_s
    print(f"command = Lightning import {lightning:.2f} s ({lightning / command:.0%}; torch alone "
          f"{med['import torch']:.2f} s) + fit {fit_s:.2f} s ({fit_s / command:.0%}) + the rest {rest:.2f} s "
          f"({rest / command:.0%}: the zoo's imports, registry, data, evaluation, picture, files)")
    floor = med[TORCH_OPTIMISER]
    print(f"a plain PyTorch script reaches its first step after {floor:.2f} s (import torch, build an optimiser): "
          f"{(floor + fit_s) / fit_s:.1f}x this fit with nothing else at all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
