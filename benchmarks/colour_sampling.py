"""Sampling speed of the colour PixelCNNs (R -> G -> B channel masks) on 32x32x3 images: the
incremental sampler (``model.sample``: per step, one colour group of each layer at one pixel)
against sampling from the definition (one full network pass per sub-pixel, timed over the
first ``--naive-steps`` of the 3072 steps and extrapolated linearly, since every full pass costs
the same). Arms interleaved over ``--repeats`` rounds; wall time and CPU time
(``resource.getrusage``, user + system of this process) for each.

Sampling cost does not depend on the weights, so the models are freshly initialised (seeded).

    OMP_NUM_THREADS=1 python benchmarks/colour_sampling.py --batch 8 \
        --config gated_pixelcnn:128:15:7 --config gated_pixelcnn:32:4:7 --config pixelcnn:32:4:7
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (sets OMP_NUM_THREADS before torch is imported)

import torch  # noqa: E402

from zoo_core.api import default_zoo  # noqa: E402
from zoo_core.data.spec import DataSpec  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def naive_steps(model, n: int, steps: int) -> None:
    """The first ``steps`` draws of sampling from the definition: a full pass per sub-pixel."""
    x = torch.zeros(n, *model.event_shape)
    flat = x.reshape(n, -1)
    with torch.inference_mode():
        for d in torch.argsort(model.order()).tolist()[:steps]:
            flat[:, d] = model.dim_sample(model.conditionals(x)[:, d])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", default=None,
                        help="architecture:channels:n_layers:kernel_size (repeatable)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--naive-steps", type=int, default=24)
    parser.add_argument("--n-components", type=int, default=10)
    args = parser.parse_args()
    configs = args.config or ["gated_pixelcnn:128:15:7"]
    spec = DataSpec("cifar10", (3, 32, 32), "dequantized", 256).to_dict()
    cls = default_zoo().family("autoregressive")
    models = {}
    for text in configs:
        arch, channels, layers, kernel = text.split(":")
        torch.manual_seed(0)
        models[text] = cls(data=spec, optim=None, architecture=arch, channels=int(channels), n_layers=int(layers),
                           kernel_size=int(kernel), n_components=args.n_components).eval()
    D = 3 * 32 * 32
    results = {text: {"incremental": [], "naive": []} for text in configs}
    for _ in range(args.repeats):
        for text, model in models.items():
            torch.manual_seed(1)
            results[text]["incremental"].append(timed(lambda: model.sample((args.batch,))))
            torch.manual_seed(1)
            wall, cpu = timed(lambda: naive_steps(model, args.batch, args.naive_steps))
            results[text]["naive"].append((wall * D / args.naive_steps, cpu * D / args.naive_steps))
    report = {}
    for text, arms in results.items():
        row = {}
        for arm, times in arms.items():
            wall = min(t[0] for t in times)
            cpu = min(t[1] for t in times)
            row[arm] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                        "samples_per_wall_s": round(args.batch / wall, 3),
                        "samples_per_cpu_s": round(args.batch / cpu, 3)}
        row["naive"]["note"] = f"extrapolated from {args.naive_steps} of {D} steps"
        row["speed_up_wall"] = round(row["naive"]["wall_s"] / row["incremental"]["wall_s"], 1)
        report[text] = row
    print(json.dumps({"batch": args.batch, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
                      "results": report}, indent=1))


if __name__ == "__main__":
    main()
