"""Pictures and sample files: a run's samples.png, and ``zoo sample``."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from zoo_core.checkpoint_io import write_atomic, write_errors_reported
from zoo_core.errors import ZooError

SAMPLE_SUFFIXES = (".png", ".pt", ".npy")
MAX_SAMPLES = 100_000  # zoo sample -n above this needs --force


def save_run_picture(model, datamodule, config: dict, path: Path) -> None:
    from zoo_core.plotting import save_samples

    n = config["eval"]["num_samples"]
    two_d = tuple(datamodule.spec.event_shape) == (2,)
    if not two_d and not datamodule.spec.is_image:
        return
    data = datamodule.eval_data("test")[:2000] if two_d else None
    title = f"{config['entry']}: {config['family']} samples"
    if two_d:
        n = max(n, 1000)
    with write_errors_reported(path):
        save_samples(model, path, n, data=data, title=title)


def check_output(output: str) -> Path:
    """``-o`` must name a file to create, ending in .png, .pt or .npy, in a directory that can exist."""
    out = Path(output)
    if out.suffix.lower() not in SAMPLE_SUFFIXES:
        raise ZooError(f"-o {output}: expected a file ending in .png, .pt or .npy")
    if out.is_dir():
        raise ZooError(f"-o {output}: is a directory; expected a file name ending in .png, .pt or .npy")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ZooError(f"-o {output}: {parent} is a file, not a directory")
            break
    return out


def sample_to_file(model, config: dict, n: int, output: str, seed: int = 0, context=None,
                   force: bool = False) -> Path:
    """Draw ``n`` samples; write a PNG picture, a .pt tensor or a .npy array, atomically, at exactly
    ``output`` (chosen by its suffix)."""
    import pytorch_lightning as pl

    out = check_output(output)
    if n < 1:
        raise ZooError(f"-n must be a positive number of samples, got {n}")
    if n > MAX_SAMPLES and not force:
        raise ZooError(f"-n {n}: more than {MAX_SAMPLES} samples; add --force if you mean it")
    pl.seed_everything(seed, verbose=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".png":
        from zoo_core.plotting import save_samples

        save_samples(model, out, n, title=f"{config['entry']}: {n} samples", context=context)
        return out
    with torch.no_grad():
        samples = model.sample((n,), context=context).cpu()
    buffer = io.BytesIO()
    if suffix == ".pt":
        torch.save(samples, buffer)
    else:
        import numpy as np

        np.save(buffer, samples.numpy())
    write_atomic(out, buffer.getvalue())
    return out
