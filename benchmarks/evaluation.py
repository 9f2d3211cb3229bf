"""Importance-weighted evaluation of the VAE family: the previous log_prob against the current one,
on the same briefly trained model and the same test examples.

The previous evaluation (reproduced below as ``previous_log_prob``, verbatim in what it computes)
drew the K importance samples in fixed chunks of 100, decoded each chunk for the whole batch at
once (a (100, N, D) tensor for N = 500 examples and D = 784 pixels: 157 MB per intermediate),
scored it with ``binary_cross_entropy_with_logits`` on an expanded copy of x, and stacked the
chunks' logsumexps. The current ``VAE.log_prob`` sizes its chunks to a memory budget
(``model.eval_memory_mb``, 16 MiB by default: a few samples for 500 examples, so the decoder's
activations stay in cache), runs in inference mode, scores Bernoulli pixels as
sum_d x_d a_d - softplus(a_d) with one batched product for the x.a term, and accumulates the
logsumexp across chunks (log-add-exp of the running value).

Both arms run as the runner's test loop runs them (``torch.inference_mode``), interleaved, their
order alternating between rounds; each is timed by wall time and by this process's CPU time
(``resource.getrusage``: user + system), the clock to read on a shared machine. The two bounds
are independent Monte Carlo draws of the same L_K (every arm and round has its own seed), so they
must agree within Monte Carlo error:
the mean per-example difference is printed with its standard error (and must be within three of
them, plus 1e-4 nats for float32 rounding), next to the ELBO, which says how much the K samples
matter for this model.

    ZOO_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python benchmarks/evaluation.py \\
        --entry vae-mnist --train-steps 1000 --examples 200 --iw-samples 5000 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (sets OMP_NUM_THREADS before torch is imported)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SEED = 2024
PREVIOUS_CHUNK = 100
#: the two arms sum 784 float32 terms in different orders: a few 1e-5 nats apart even for the same noise
FLOAT_TOLERANCE = 1e-4


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def previous_log_prob(model, x: torch.Tensor, K: int, chunk: int = PREVIOUS_CHUNK) -> torch.Tensor:
    """The VAE's importance-weighted log_prob as it was: (N, *event) -> (N,)."""
    x_flat = x.reshape(len(x), -1).to(model.dtype)  # (N, D)
    mean, log_var = model.encode(x_flat)  # (N, L)
    std = torch.exp(0.5 * log_var)
    log_2pi = math.log(2 * math.pi)
    chunks = []
    for start in range(0, K, chunk):
        k = min(chunk, K - start)
        eps = torch.randn(k, *mean.shape, device=mean.device, dtype=mean.dtype)  # (k, N, L)
        z = mean + std * eps  # (k, N, L)
        log_q = -0.5 * (log_2pi + eps**2).sum(-1) - 0.5 * log_var.sum(-1)  # (k, N)
        a = model.decoder(z)  # (k, N, D) Bernoulli logits
        log_lik = -F.binary_cross_entropy_with_logits(a, x_flat.expand_as(a), reduction="none").sum(-1)
        log_w = log_lik - 0.5 * (log_2pi + z**2).sum(-1) - log_q  # (k, N)
        chunks.append(torch.logsumexp(log_w, dim=0))  # (N,)
    return torch.logsumexp(torch.stack(chunks), dim=0) - math.log(K)


def timed(fn, seed: int) -> tuple[torch.Tensor, float, float]:
    torch.manual_seed(seed)
    t0, c0 = time.perf_counter(), cpu_seconds()
    with torch.inference_mode():
        out = fn()
    return out.clone(), time.perf_counter() - t0, cpu_seconds() - c0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entry", default="vae-mnist", help="a binarised-data VAE entry (vae-mnist, vae-digits)")
    p.add_argument("--train-steps", type=int, default=1000)
    p.add_argument("--examples", type=int, default=200, help="test examples evaluated per call")
    p.add_argument("--iw-samples", type=int, default=5000, help="K")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    _common.quiet()

    config = _common.resolve(args.entry, args.train_steps)
    if config["family"] != "vae":
        raise SystemExit(f"entry '{args.entry}' is family '{config['family']}'; this benchmark is for VAE entries")
    datamodule, model = _common.build(config, args.data_dir)
    if model.gaussian_decoder:
        raise SystemExit(f"entry '{args.entry}': the previous evaluation is reproduced for Bernoulli decoders only")
    start = time.perf_counter()
    _common.plain_loop(model, datamodule, config, torch.device("cpu"))
    model.eval()
    model.configure_evaluation({"iw_samples": args.iw_samples})
    test = datamodule.eval_data("test")
    x = test[: args.examples]
    print(f"{args.entry}: trained {args.train_steps} steps ({time.perf_counter() - start:.0f} s); "
          f"K={args.iw_samples} on {len(x)} test examples (of {len(test)}), "
          f"chunk {model.eval_chunk_size(len(x))} samples at {model.eval_memory_mb:g} MiB", flush=True)

    arms = {"previous": lambda: previous_log_prob(model, x, args.iw_samples), "current": lambda: model.log_prob(x)}
    rows = {name: {"wall_s": [], "cpu_s": [], "bounds": []} for name in arms}
    names = list(arms)
    for r in range(args.repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            out, wall, cpu = timed(arms[name], SEED + 100 * r + names.index(name))  # independent draws
            rows[name]["wall_s"].append(wall)
            rows[name]["cpu_s"].append(cpu)
            rows[name]["bounds"].append(out.double())
            print(f"  round {r + 1} {name:>8}: wall {wall:7.2f} s  cpu {cpu:7.2f} s  "
                  f"mean bound {float(out.mean()):.3f} nats", flush=True)

    summary = {"entry": args.entry, "train_steps": args.train_steps, "examples": len(x),
               "iw_samples": args.iw_samples, "test_examples": len(test)}
    for name in names:
        wall, cpu = statistics.median(rows[name]["wall_s"]), statistics.median(rows[name]["cpu_s"])
        summary[name] = {"wall_s": wall, "cpu_s": cpu, "wall_s_range": [min(rows[name]["wall_s"]), max(rows[name]["wall_s"])],
                         "cpu_s_range": [min(rows[name]["cpu_s"]), max(rows[name]["cpu_s"])],
                         "full_test_set_cpu_min": cpu / len(x) * len(test) / 60}
    summary["speedup_wall"] = summary["previous"]["wall_s"] / summary["current"]["wall_s"]
    summary["speedup_cpu"] = summary["previous"]["cpu_s"] / summary["current"]["cpu_s"]
    # agreement: per-example differences of independent draws, averaged over the rounds' pairs
    diffs = torch.stack([c - p for c, p in zip(rows["current"]["bounds"], rows["previous"]["bounds"])])  # (R, N)
    per_example = diffs.mean(0)  # (N,)
    mean_diff = float(per_example.mean())
    se = float(per_example.std() / math.sqrt(len(per_example)))
    summary["mean_difference_nats"], summary["difference_stderr"] = mean_diff, se
    summary["agree"] = abs(mean_diff) <= 3 * se + FLOAT_TOLERANCE
    # context: how far the K-sample bound is above the ELBO (a collapsed posterior makes all weights equal)
    model.configure_evaluation({"iw_samples": 1})
    with torch.inference_mode():
        torch.manual_seed(SEED)
        elbo = torch.stack([model.log_prob(x).double() for _ in range(20)]).mean(0)  # (N,)
    summary["elbo_nats"] = float(elbo.mean())
    summary["iwae_minus_elbo_nats"] = float(torch.stack(rows["current"]["bounds"]).mean()) - summary["elbo_nats"]
    print(f"median over {args.repeats} rounds: previous wall {summary['previous']['wall_s']:.2f} s cpu "
          f"{summary['previous']['cpu_s']:.2f} s | current wall {summary['current']['wall_s']:.2f} s cpu "
          f"{summary['current']['cpu_s']:.2f} s")
    print(f"speed-up: {summary['speedup_cpu']:.2f}x CPU time, {summary['speedup_wall']:.2f}x wall time")
    print(f"full test set ({len(test)} examples, one core): previous ~{summary['previous']['full_test_set_cpu_min']:.1f} "
          f"CPU-min, current ~{summary['current']['full_test_set_cpu_min']:.1f} CPU-min")
    print(f"bounds: current - previous = {mean_diff:+.6f} nats (standard error {se:.6f}): "
          f"{'agree' if summary['agree'] else 'DISAGREE'} within Monte Carlo error (3 standard errors "
          f"+ {FLOAT_TOLERANCE:g} nats of float32 rounding)")
    print(f"context: mean bound {float(torch.stack(rows['current']['bounds']).mean()):.3f} nats, ELBO (K=1, 20 draws) "
          f"{summary['elbo_nats']:.3f} nats: the K-sample bound is {summary['iwae_minus_elbo_nats']:.3f} nats tighter")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
