"""Sampling throughput: the diffusion family's DDIM and respaced ancestral samplers against
ancestral sampling over all T steps (with the sample quality each one buys), and the
autoregressive family's incremental sampler against the sampler it replaced.

For each entry, the model is first trained briefly with the plain loop of ``_common.py``
(``--train-steps`` Adam steps with the entry's settings and EMA; far from converged, so the
quality figures compare samplers at one model, not the family at its best; ``--checkpoint``
takes a trained run instead). Then, for ``--repeats`` rounds with the samplers' order rotating,
each sampler draws ``--batch`` samples in one ``model.sample`` call (the same seeded x_T for
every sampler): samples/s of wall time and per CPU-second, and the speed-up over ancestral-T.
Quality: sliced Wasserstein-1 and MMD^2 (``zoo_core.metrics.sample_quality``) between
``--quality-samples`` samples and as many held-out test examples, next to the same statistics
between held-out validation and test examples (the floor a perfect model reaches).

    OMP_NUM_THREADS=1 python benchmarks/sampling.py --entries diffusion-moons diffusion-digits

Autoregressive entries (MADE, PixelCNN, Gated PixelCNN): "before" is the ancestral sampler the
family shipped before its incremental one, kept verbatim below (``before_draw``: one network
pass per dimension, on the rows up to the current one for the PixelCNNs, under no_grad);
"after" is ``model.sample`` (``zoo_autoregressive.incremental``: each hidden unit computed
once, under inference_mode). Both draw ``--batch`` samples per call from the same seed, in
interleaved rounds; the script also reports whether the two gave identical samples.

    OMP_NUM_THREADS=1 python benchmarks/sampling.py --entries autoregressive-digits \
        autoregressive-pixelcnn-digits autoregressive-gated-digits
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (sets OMP_NUM_THREADS before torch is imported)

import torch  # noqa: E402

from zoo_core.metrics.sample_quality import median_bandwidth, mmd2_unbiased, sliced_wasserstein  # noqa: E402

DEFAULT_TRAIN_STEPS = {"diffusion-moons": 1500, "diffusion-digits": 400}
DEFAULT_BATCH = {"diffusion-moons": 2000, "diffusion-digits": 256}
AUTOREGRESSIVE_TRAIN_STEPS = 200  # a briefly trained model: sampling cost does not depend on training
AUTOREGRESSIVE_BATCH = 256
SEED = 2024


# ---- autoregressive: the sampler before the incremental one (verbatim, as a function) -------------
@torch.no_grad()
def before_draw(model, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n samples (n, *event) and the conditional means, as ``Autoregressive._draw`` computed them
    before: one network pass per dimension (unconditional models)."""
    x = torch.zeros(n, *model.event_shape, device=model.device, dtype=model.dtype)  # (n, *event)
    means = torch.zeros_like(x)
    if n == 0:
        return x, means
    ks = torch.randint(model.num_masks, (n,)) if model.num_masks > 1 else torch.zeros(n, dtype=torch.long)  # (n,)
    for k in range(model.num_masks):
        rows = (ks == k).nonzero()[:, 0].to(x.device)
        if len(rows):
            x[rows], means[rows] = _before_sample_mask(model, x[rows], k)
    return x, means


def _before_sample_mask(model, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(x)
    flat = x.reshape(n, model.D)  # a view: writes go to x
    means = torch.zeros_like(flat)  # (n, D)
    if model.architecture in ("pixelcnn", "gated_pixelcnn"):
        H, W = model.event_shape[1], model.event_shape[2]
        for i in range(H):
            for j in range(W):
                # rows below i cannot reach pixel (i, j): every mask is zero below its centre
                out = model.net(model.net_input(x[:, :, : i + 1]))  # (n, P, i+1, W)
                x[:, 0, i, j], means[:, i * W + j] = model.dim_sample(out[:, :, i, j])
        return x, means.reshape(x.shape)
    for d in torch.argsort(model.order(k)).tolist():  # dimensions in their sampling order
        params = model.conditionals(x, k)[:, d]  # (n, P)
        flat[:, d], means[:, d] = model.dim_sample(params)
    return x, means.reshape(x.shape)


def after_draw(model, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return model._draw(n)


def time_draw(fn, model, n: int, device) -> tuple[torch.Tensor, float, float]:
    """Samples (n, D) from fn(model, n) with the global seed at SEED; wall and CPU seconds."""
    torch.manual_seed(SEED)
    _common.sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    x, _ = fn(model, n)
    _common.sync(device)
    return x.reshape(n, -1).cpu(), time.perf_counter() - t0, time.process_time() - c0


def measure_autoregressive(entry: str, args, device) -> dict:
    if args.checkpoint:
        model, _, how = trained_model(entry, args, device)
    else:
        steps = args.train_steps or AUTOREGRESSIVE_TRAIN_STEPS
        config = _common.resolve(entry, steps)
        datamodule, model = _common.build(config, args.data_dir)
        start = time.perf_counter()
        _common.plain_loop(model, datamodule, config, device)
        model, how = model.eval(), f"trained {steps} steps ({time.perf_counter() - start:.0f} s)"
    n = args.batch or AUTOREGRESSIVE_BATCH
    arms = [("before", before_draw), ("after", after_draw)]
    rows = {label: {"wall": [], "cpu": []} for label, _ in arms}
    samples = {}
    print(f"  {entry}: {how}; timing {n} samples per call", flush=True)
    for r in range(args.repeats):
        for label, fn in (arms if r % 2 == 0 else arms[::-1]):
            x, wall, cpu = time_draw(fn, model, n, device)
            rows[label]["wall"].append(n / wall)
            rows[label]["cpu"].append(n / cpu)
            samples[label] = x
    diff = float((samples["after"].double() - samples["before"].double()).abs().max())
    for label in rows:
        rows[label]["speedup_wall"] = statistics.median(rows[label]["wall"]) / statistics.median(rows["before"]["wall"])
        rows[label]["speedup_cpu"] = statistics.median(rows[label]["cpu"]) / statistics.median(rows["before"]["cpu"])
    return {"entry": entry, "family": "autoregressive", "model": how, "architecture": model.architecture,
            "dims": model.D, "batch": n, "max_abs_difference": diff, "identical": diff == 0.0, "samplers": rows}


def print_autoregressive(res: dict, repeats: int) -> None:
    print(f"{res['entry']} ({res['architecture']}, D={res['dims']}, {res['model']}, {res['batch']} samples per call; "
          f"same seed, samples {'identical' if res['identical'] else 'max |diff| %.3g' % res['max_abs_difference']})")
    for label, row in res["samplers"].items():
        print(f"  {label:<8} wall {_common.spread(row['wall']):<32} x{row['speedup_wall']:<7.2f} "
              f"per CPU-s {_common.spread(row['cpu']):<32} x{row['speedup_cpu']:<7.2f}")


def samplers_for(timesteps: int) -> list[tuple[str, str, int | None]]:
    """(label, sampler, steps): ancestral over all T first (the baseline)."""
    return [(f"ancestral-{timesteps}", "ancestral", None), ("ancestral-100 (respaced)", "ancestral", 100),
            ("ddim-100", "ddim", 100), ("ddim-50", "ddim", 50)]


def draw(model, sampler: str, steps: int | None, n: int, device) -> tuple[torch.Tensor, float, float]:
    """n samples (flattened to (n, D)) with the given sampler; wall and CPU seconds."""
    saved = model.sampler, model.sample_steps
    model.sampler, model.sample_steps = sampler, steps
    try:
        torch.manual_seed(SEED)
        _common.sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            x = model.sample((n,))
        _common.sync(device)
        return x.reshape(n, -1).double().cpu(), time.perf_counter() - t0, time.process_time() - c0
    finally:
        model.sampler, model.sample_steps = saved


def trained_model(entry: str, args, device):
    if args.checkpoint:
        from zoo_core.loading import load_model
        from zoo_core.runner import build_datamodule

        model, config, _ = load_model(args.checkpoint, _common.ZOO)
        if config["entry"] != entry:
            raise SystemExit(f"--checkpoint is a run of '{config['entry']}', not '{entry}'")
        return model.to(device).eval(), build_datamodule(_common.ZOO, config, args.data_dir), "checkpoint " + args.checkpoint
    steps = args.train_steps or DEFAULT_TRAIN_STEPS.get(entry, 1000)
    config = _common.resolve(entry, steps)
    datamodule, model = _common.build(config, args.data_dir)
    start = time.perf_counter()
    _common.plain_loop(model, datamodule, config, device)
    return model.eval(), datamodule, f"trained {steps} steps ({time.perf_counter() - start:.0f} s)"


def measure(entry: str, args, device) -> dict:
    model, datamodule, how = trained_model(entry, args, device)
    if model.family != "diffusion":
        raise SystemExit(f"entry '{entry}' is family '{model.family}'; this benchmark is for diffusion "
                         "and autoregressive entries")
    n = args.batch or DEFAULT_BATCH.get(entry, 256)
    test = datamodule.eval_data("test").reshape(len(datamodule.eval_data("test")), -1).double()
    val = datamodule.eval_data("val").reshape(len(datamodule.eval_data("val")), -1).double()
    nq = min(args.quality_samples, len(test), len(val))
    gen = torch.Generator().manual_seed(SEED)
    reference = test[torch.randperm(len(test), generator=gen)[:nq]]
    other = val[torch.randperm(len(val), generator=gen)[:nq]]
    bandwidth = median_bandwidth(reference)
    floor = {"sliced_wasserstein": sliced_wasserstein(other, reference), "mmd2": mmd2_unbiased(other, reference, bandwidth)}
    samplers = samplers_for(model.timesteps)
    rows = {label: {"sampler": s, "steps": k if k is not None else model.timesteps, "wall": [], "cpu": []}
            for label, s, k in samplers}
    print(f"  {entry}: {how}; timing {n} samples per call", flush=True)
    for r in range(args.repeats):
        order = samplers[r % len(samplers):] + samplers[:r % len(samplers)]
        for label, sampler, steps in order:
            _, wall, cpu = draw(model, sampler, steps, n, device)
            rows[label]["wall"].append(n / wall)
            rows[label]["cpu"].append(n / cpu)
    for label, sampler, steps in samplers:
        x, _, _ = draw(model, sampler, steps, nq, device)
        ok = bool(torch.isfinite(x).all())
        rows[label]["sliced_wasserstein"] = sliced_wasserstein(x, reference) if ok else float("nan")
        rows[label]["mmd2"] = mmd2_unbiased(x, reference, bandwidth) if ok else float("nan")
    base = samplers[0][0]
    for label in rows:
        rows[label]["speedup_wall"] = statistics.median(rows[label]["wall"]) / statistics.median(rows[base]["wall"])
        rows[label]["speedup_cpu"] = statistics.median(rows[label]["cpu"]) / statistics.median(rows[base]["cpu"])
    return {"entry": entry, "family": "diffusion", "model": how, "timesteps": model.timesteps, "batch": n, "quality_samples": nq,
            "data_floor": floor, "samplers": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", nargs="+", default=["diffusion-moons", "diffusion-digits"])
    p.add_argument("--train-steps", type=int, default=None,
                   help="brief training before sampling (default: diffusion 1500 for moons, 400 for digits; "
                        f"autoregressive {AUTOREGRESSIVE_TRAIN_STEPS})")
    p.add_argument("--checkpoint", default=None, help="a trained run or checkpoint instead (one entry only)")
    p.add_argument("--batch", type=int, default=None,
                   help=f"samples per timed call (default: 2000 moons, 256 digits, {AUTOREGRESSIVE_BATCH} autoregressive)")
    p.add_argument("--quality-samples", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.checkpoint and len(args.entries) != 1:
        raise SystemExit("--checkpoint goes with exactly one entry in --entries")
    _common.quiet()
    device = _common.device_of(args.device)
    autoregressive = [e for e in args.entries if _common.resolve(e, 1)["family"] == "autoregressive"]
    print(f"# sampling: diffusion DDIM / respaced ancestral vs ancestral over all T; autoregressive incremental "
          f"vs before; {_common.machine_note()}", flush=True)
    results = [measure_autoregressive(entry, args, device) if entry in autoregressive else measure(entry, args, device)
               for entry in args.entries]
    if autoregressive:
        print(f"\n# autoregressive samples/s: median [min-max] over {args.repeats} rounds (arms alternating); "
              "speed-up over before (medians)")
        for res in results:
            if res["family"] == "autoregressive":
                print_autoregressive(res, args.repeats)
    if len(autoregressive) < len(results):
        print(f"\n# diffusion samples/s: median [min-max] over {args.repeats} rounds; speed-up over ancestral-T "
              "(medians); quality vs held-out test data")
    for res in results:
        if res["family"] != "diffusion":
            continue
        floor = res["data_floor"]
        print(f"{res['entry']} (T={res['timesteps']}, {res['model']}, {res['batch']} samples per call; "
              f"quality on {res['quality_samples']}: data floor SW1 {floor['sliced_wasserstein']:.4f}, "
              f"MMD^2 {floor['mmd2']:.5f})")
        for label, row in res["samplers"].items():
            print(f"  {label:<26} {row['steps']:>5} steps  wall {_common.spread(row['wall']):<30} "
                  f"x{row['speedup_wall']:<6.2f} per CPU-s {_common.spread(row['cpu']):<30} x{row['speedup_cpu']:<6.2f} "
                  f"SW1 {row['sliced_wasserstein']:.4f}  MMD^2 {row['mmd2']:.5f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": _common.machine_note(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
