"""Sample pictures: an image grid for images; data, density and samples for 2-D data."""
from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from zoo_core.model import check_sample_shape  # noqa: E402


def image_grid(images: Tensor, path: str | Path, title: str = "", cols: int | None = None) -> None:
    """images: (N, C, H, W) in [0, 1] -> a grid PNG, square-ish unless ``cols`` is given."""
    images = images.detach().float().cpu().clamp(0, 1)
    n, c, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = torch.ones(c, rows * (h + 1) + 1, cols * (w + 1) + 1)
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = images[i]
    fig, ax = plt.subplots(figsize=(max(3, cols * w / 10), max(3, rows * h / 10) + 0.4))
    ax.imshow(canvas[0] if c == 1 else canvas.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def _save(fig, path: str | Path) -> None:
    """Write the figure as a PNG atomically (a killed or failed write leaves no partial file)."""
    from zoo_core.checkpoint_io import write_atomic

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    write_atomic(path, buffer.getvalue())


def scatter_2d(samples: Tensor, path: str | Path, title: str = "", data: Tensor | None = None,
               log_density=None, grid_points: int = 150) -> None:
    """samples: (N, 2). Panels: held-out data (if given), model density (if given) with samples."""
    samples = samples.detach().float().cpu()
    ref = data if data is not None else samples
    lo = torch.quantile(ref, 0.001, dim=0) - 0.5
    hi = torch.quantile(ref, 0.999, dim=0) + 0.5
    panels = 1 + (data is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.2), squeeze=False)
    axes = axes[0]
    if data is not None:
        d = data.detach().float().cpu()
        axes[0].scatter(d[:, 0], d[:, 1], s=1, alpha=0.4, color="black")
        axes[0].set_title("held-out data", fontsize=9)
    ax = axes[-1]
    if log_density is not None:
        xs = torch.linspace(float(lo[0]), float(hi[0]), grid_points)
        ys = torch.linspace(float(lo[1]), float(hi[1]), grid_points)
        gx, gy = torch.meshgrid(xs, ys, indexing="xy")
        grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)  # (G*G, 2)
        with torch.no_grad():
            dens = torch.exp(log_density(grid)).reshape(grid_points, grid_points).cpu()
        ax.imshow(dens, origin="lower", extent=(float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])),
                  cmap="viridis", aspect="auto")
    ax.scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.5, color="white" if log_density else "tab:blue")
    ax.set_title(title, fontsize=9)
    for a in axes:
        a.set_xlim(float(lo[0]), float(hi[0]))
        a.set_ylim(float(lo[1]), float(hi[1]))
        a.set_aspect("equal")
    _save(fig, path)


def save_samples(model, path: str | Path, n: int, data: Tensor | None = None, title: str = "",
                 context: Tensor | int | None = None) -> None:
    """Draw ``n`` samples from ``model`` and save the picture that suits its data. A conditional
    model without a given context draws one row per class."""
    model.eval()
    per_class = None
    if getattr(model, "is_conditional", False) and context is None and model.num_classes:
        k = model.num_classes
        per_class = max(1, n // k)
        n = per_class * k
        context = torch.arange(k).repeat_interleave(per_class)  # (n,): row r holds class r
    with torch.no_grad():
        if context is None:
            samples = model.sample_for_display(n)
        else:
            samples = model.sample((n,), context=torch.as_tensor(context))
            if model.data_spec.is_image:
                samples = samples.clamp(0, 1)
    check_sample_shape(model, samples, (n,))  # sample_for_display bypasses the public sample
    spec = model.data_spec
    if spec.is_image:
        image_grid(samples.reshape(n, *spec.event_shape), path, title, cols=per_class)
    elif spec.event_shape == (2,):
        log_density = (lambda g: model.log_prob(g.to(model.device))) if model.likelihood == "exact" else None
        scatter_2d(samples, path, title, data=data, log_density=log_density)
    else:
        raise ValueError(f"no picture for event shape {spec.event_shape}; save samples as a tensor file instead")
