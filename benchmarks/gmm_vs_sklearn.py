"""EM fit of the zoo's GMM against scikit-learn's GaussianMixture on a registry entry (gmm-moons).

Three arms, interleaved (their order rotating between rounds), each a whole fit from the k-means
start with the entry's n_components, covariance, reg_covar, tol and max_iter (= train.max_epochs):

- ``sklearn``: ``GaussianMixture(...).fit(train)`` (k-means init on the training set, random_state 0);
- ``zoo runner``: the entry's model trained by a Lightning Trainer (one epoch = one EM iteration,
  k-means on the datamodule's init batch in ``setup``; no validation, logger or checkpoints);
- ``zoo fit_em``: ``GMM.fit_em(train)``, the same EM outside Lightning, k-means on the training set.

Printed per arm: median CPU time (resource.getrusage, user + system) and wall time over the rounds,
EM iterations, test NLL (nats) with its standard error, and the ratios to scikit-learn.

    OMP_NUM_THREADS=1 python benchmarks/gmm_vs_sklearn.py [--entry gmm-moons] [--rounds 5]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch/numpy are imported

import argparse  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from sklearn.mixture import GaussianMixture  # noqa: E402

from zoo_core.registry import Registry  # noqa: E402
from zoo_core.runner import build_datamodule, build_model  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn):
    cpu, wall = cpu_seconds(), time.perf_counter()
    out = fn()
    return out, cpu_seconds() - cpu, time.perf_counter() - wall


def nll(log_prob: torch.Tensor) -> tuple[float, float]:
    nll = -log_prob.double()
    return float(nll.mean()), float(nll.std() / math.sqrt(len(nll)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entry", default="gmm-moons")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    config = Registry().resolve(args.entry)
    m = config["model"]
    max_iter = int(config["train"]["max_epochs"])
    dm = build_datamodule(config)
    dm.setup("fit")
    train, test = dm.eval_data("train"), dm.eval_data("test")
    train_np = train.reshape(len(train), -1).double().numpy()

    def sklearn_fit():
        gm = GaussianMixture(m["n_components"], covariance_type=m["covariance"], reg_covar=m["reg_covar"],
                             tol=m["tol"], max_iter=max_iter, init_params="kmeans", random_state=m.get("init_seed", 0))
        gm.fit(train_np)
        return gm.n_iter_, nll(torch.as_tensor(gm.score_samples(test.reshape(len(test), -1).double().numpy())))

    def runner_fit():
        model = build_model(config, dm)
        trainer = pl.Trainer(max_epochs=max_iter, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                             limit_val_batches=0, num_sanity_val_steps=0)
        trainer.fit(model, datamodule=dm)
        with torch.no_grad():
            return trainer.current_epoch, nll(model.eval().log_prob(test))

    def fit_em():
        model = build_model(config, dm)
        history = model.fit_em(train, max_iter=max_iter, tol=m["tol"])
        with torch.no_grad():
            return len(history), nll(model.eval().log_prob(test))

    arms = {"sklearn": sklearn_fit, "zoo runner": runner_fit, "zoo fit_em": fit_em}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
    results: dict[str, tuple] = {}
    for fn in arms.values():  # warm-up: imports, first-call allocations
        fn()
    names = list(arms)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            torch.manual_seed(0)
            out, cpu, wall = timed(arms[name])
            times[name].append((cpu, wall))
            results[name] = out

    print(f"entry {args.entry}: n_components={m['n_components']}, covariance={m['covariance']}, "
          f"reg_covar={m['reg_covar']}, tol={m['tol']}, max_iter={max_iter}, k-means init; "
          f"{len(train)} train / {len(test)} test examples; {args.rounds} interleaved rounds, "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    base_cpu = statistics.median(c for c, _ in times["sklearn"])
    base_wall = statistics.median(w for _, w in times["sklearn"])
    print(f"{'arm':<12} {'cpu s (median, min-max)':<28} {'wall s (median)':<16} {'iters':>5} "
          f"{'test NLL ± s.e.':<18} {'cpu ratio':>9} {'wall ratio':>10}")
    for name in arms:
        cpus, walls = [c for c, _ in times[name]], [w for _, w in times[name]]
        iters, (mean, se) = results[name]
        cpu, wall = statistics.median(cpus), statistics.median(walls)
        print(f"{name:<12} {cpu:7.3f} ({min(cpus):.3f}-{max(cpus):.3f})        {wall:7.3f}          {iters:>5} "
              f"{mean:.4f} ± {se:.4f}    {cpu / base_cpu:9.2f} {wall / base_wall:10.2f}")
    sk_nll, sk_se = results["sklearn"][1]
    for name in ("zoo runner", "zoo fit_em"):
        diff = results[name][1][0] - sk_nll
        print(f"{name}: test NLL - sklearn's = {diff:+.4f} nats ({diff / sk_se:+.2f} standard errors)")


if __name__ == "__main__":
    main()
