"""The flow family against zuko's reference implementation, for the same time on the same split.

Both arms train on the entry's training split with the same batches (one seeded permutation per
epoch), Adam at the entry's learning rate with a cosine schedule over each arm's *own* elapsed
time (so both anneal to zero at the budget), in alternating chunks of ``--chunk`` steps so that
both see the same machine load. Each arm stops when its own clock reaches ``--seconds``: wall
time by default, or the process CPU time spent in the arm with ``--clock cpu`` (the fair budget on
a shared, overloaded CPU, where wall time mostly measures the scheduler). Then
both are evaluated on the test split: NLL in nats (exact for both), steps taken, and the ratio
of the test NLLs (zoo / zuko), with both clocks (wall and process CPU time spent in the arm).

The zuko arm is ``zuko.flows.RealNVP`` (Dinh et al. 2017; F. Rozet et al., zuko) with as many
couplings and the same hidden widths as the entry, or ``zuko.flows.NSF`` (Durkan et al. 2019)
for a spline entry (same bins), both on the raw (unstandardised) data as zuko takes it.

    OMP_NUM_THREADS=1 python benchmarks/flow_vs_zuko.py --entry flow-moons --seconds 60 [--clock cpu]

Without zuko installed it prints a message and exits with status 0.
"""
from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (sets OMP_NUM_THREADS before torch is imported)

import torch  # noqa: E402


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Arm:
    """One model's training: its loss, optimiser, clocks and batch position."""

    def __init__(self, name: str, loss_fn, params, lr: float, budget_s: float, clock: str):
        self.name, self.loss_fn, self.lr, self.budget, self.clock = name, loss_fn, lr, budget_s, clock
        self.opt = torch.optim.Adam(params, lr=lr)
        self.wall = self.cpu = 0.0
        self.steps = 0

    @property
    def elapsed(self) -> float:
        return self.cpu if self.clock == "cpu" else self.wall

    @property
    def done(self) -> bool:
        return self.elapsed >= self.budget

    def train(self, batches: list[torch.Tensor]) -> None:
        for x in batches:
            t0, c0 = time.perf_counter(), cpu_s()
            for group in self.opt.param_groups:  # cosine over this arm's own elapsed time
                group["lr"] = 0.5 * self.lr * (1 + math.cos(math.pi * min(1.0, self.elapsed / self.budget)))
            self.opt.zero_grad()
            self.loss_fn(x).backward()
            self.opt.step()
            self.steps += 1
            self.wall += time.perf_counter() - t0
            self.cpu += cpu_s() - c0


def zuko_flow(zuko, model_cfg: dict, features: int):
    hidden = tuple(int(h) for h in model_cfg.get("hidden", (128, 128)))
    n = int(model_cfg.get("n_couplings", 8))
    if model_cfg.get("transform", "affine") == "spline":
        return zuko.flows.NSF(features, transforms=n, bins=int(model_cfg.get("n_bins", 8)), hidden_features=hidden)
    return zuko.flows.RealNVP(features, transforms=n, hidden_features=hidden)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entry", default="flow-moons", help="a flow entry on 2-D or vector data")
    parser.add_argument("--seconds", type=float, default=60.0, help="training time of each arm")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="which clock --seconds counts: wall time or the process CPU time of the arm")
    parser.add_argument("--chunk", type=int, default=20, help="steps per turn before switching arms")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import zuko
    except ImportError:
        print("flow_vs_zuko: zuko is not installed (pip install zuko); skipping the comparison")
        return
    _common.quiet()
    config = _common.resolve(args.entry, steps=1)
    if config["family"] != "flow":
        raise SystemExit(f"--entry: expected a flow entry, got family '{config['family']}'")
    datamodule, model = _common.build(config)
    if datamodule.spec.representation != "continuous":
        raise SystemExit(f"--entry: expected continuous data, got {datamodule.spec.representation}")
    train, test = datamodule.eval_data("train"), datamodule.eval_data("test")   # (N, D)
    model.init_from_data(datamodule.init_batch())
    torch.manual_seed(args.seed)
    flow = zuko_flow(zuko, config["model"], datamodule.spec.dims)
    lr, batch = float(config["optim"]["lr"]), int(config["train"]["batch_size"])
    arms = [Arm("zoo", lambda x: model.loss(x), model.parameters(), lr, args.seconds, args.clock),
            Arm("zuko", lambda x: -flow().log_prob(x).mean(), flow.parameters(), lr, args.seconds, args.clock)]
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(train), generator=gen)
    cursor, turn = 0, 0
    while not all(arm.done for arm in arms):
        if cursor + args.chunk * batch > len(order):  # a new epoch: a new permutation
            order, cursor = torch.randperm(len(train), generator=gen), 0
        chunk = [train[order[cursor + i * batch: cursor + (i + 1) * batch]] for i in range(args.chunk)]
        cursor += args.chunk * batch
        for arm in (arms if turn % 2 == 0 else arms[::-1]):  # alternate who goes first
            if not arm.done:
                arm.train(chunk)
        turn += 1
    with torch.no_grad():
        nll = {"zoo": float(-model.log_prob(test).mean()), "zuko": float(-flow().log_prob(test).mean())}
    print(f"entry {args.entry}: {len(train)} training / {len(test)} test examples, batch {batch}, lr {lr}, "
          f"{args.seconds:.0f} s of {args.clock} time per arm")
    for arm in arms:
        print(f"  {arm.name:5s} test NLL {nll[arm.name]:.4f} nats  steps {arm.steps:6d}  "
              f"wall {arm.wall:6.1f} s  cpu {arm.cpu:6.1f} s")
    print(f"  ratio zoo / zuko test NLL: {nll['zoo'] / nll['zuko']:.4f}")


if __name__ == "__main__":
    main()
