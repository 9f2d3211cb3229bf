"""DataSpec: what a model needs to know about its data, and the likelihood bookkeeping.

Every likelihood is reported per example in nats and in bits per dimension of the
*original* discrete data where there is one:

- ``binarized``: pixels are {0, 1} (dynamically binarised); log P(x) is already discrete.
- ``dequantized``: x = (k + u) / L with k in {0..L-1}, u ~ U[0, 1)^D, so a density p on
  [0, 1]^D gives the bound log P(k) >= E_u[log p((k + u) / L)] - D log L
  (Theis et al. 2016, "A note on the evaluation of generative models").
- ``continuous``: real-valued data (the toy 2-D sets); log p(x) is a differential density
  and bits/dim is simply nats / (D ln 2).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

REPRESENTATIONS = ("binarized", "dequantized", "continuous")


@dataclass(frozen=True)
class DataSpec:
    name: str
    event_shape: tuple[int, ...]
    representation: str  # one of REPRESENTATIONS
    num_levels: int | None = None  # L of the original discrete data (256 for MNIST, 17 for digits)
    extras: dict = field(default_factory=dict)  # dataset-specific facts (true entropy, ...)
    num_classes: int | None = None  # classes of the labels the dataset has, None where it has none
    conditional: bool = False  # whether batches carry the labels as context: (x, y)
    context_shape: tuple[int, ...] = ()  # () for class labels; (*shape,) for a general context tensor

    def __post_init__(self):
        if self.representation not in REPRESENTATIONS:
            raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {self.representation!r}")
        object.__setattr__(self, "event_shape", tuple(int(d) for d in self.event_shape))
        object.__setattr__(self, "context_shape", tuple(int(d) for d in self.context_shape))
        if self.conditional and not self.context_shape and not self.num_classes:
            raise ValueError(f"dataset '{self.name}' has no labels, so it cannot be conditional")

    @property
    def dims(self) -> int:
        return math.prod(self.event_shape)

    @property
    def is_binary(self) -> bool:
        return self.representation == "binarized"

    @property
    def is_image(self) -> bool:
        return len(self.event_shape) == 3

    @property
    def log_prob_offset(self) -> float:
        """Add to a model's log-density (nats, per example) to get log P in the original discrete space."""
        if self.representation == "dequantized":
            return -self.dims * math.log(self.num_levels)
        return 0.0

    def bits_per_dim(self, nll_nats: float) -> float:
        """Bits per dimension of an NLL already expressed in the original space (see log_prob_offset)."""
        return nll_nats / (self.dims * math.log(2.0))

    def check(self, x, where: str) -> None:
        """Raise a one-line DataError unless ``x`` of shape (N, *event_shape) is valid data of this
        representation: a floating-point tensor, finite, and within the representation's range
        (binarized: every value 0 or 1; dequantized: [0, 1]; continuous: any finite value).
        ``where`` names the data in the message, e.g. "dataset 'mnist', test split"."""
        import torch

        from zoo_core.errors import DataError

        what = f"{where} ({self.representation} data of shape (N, {', '.join(map(str, self.event_shape))}))"
        if not isinstance(x, torch.Tensor):
            raise DataError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.event_shape or x.dim() != 1 + len(self.event_shape):
            raise DataError(f"{what}: got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise DataError(f"{what}: expected floating-point values, got dtype {x.dtype}")
        if len(x) == 0:
            raise DataError(f"{what}: no examples")
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = x[~finite]
            kind = "NaN" if bool(torch.isnan(bad).any()) else "infinite"
            raise DataError(f"{what}: {bad.numel()} {kind} value(s), the first in example {_first_bad(~finite)}")
        if self.representation == "binarized":
            outside = (x != 0) & (x != 1)
            expected = "0 or 1 (binarized pixels)"
        elif self.representation == "dequantized":
            outside = (x < 0) | (x > 1)
            expected = "in [0, 1] (dequantized pixels (k + u) / L)"
        else:
            return
        if bool(outside.any()):
            values = x[outside]
            raise DataError(f"{what}: {values.numel()} value(s) not {expected}, e.g. {float(values[0]):g} in "
                            f"example {_first_bad(outside)}; range seen [{float(x.min()):g}, {float(x.max()):g}]")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["event_shape"] = list(self.event_shape)
        d["context_shape"] = list(self.context_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict | "DataSpec") -> "DataSpec":
        if isinstance(d, DataSpec):
            return d
        return cls(**{**d, "event_shape": tuple(d["event_shape"]),
                      "context_shape": tuple(d.get("context_shape", ()))})


def _first_bad(mask) -> int:
    """Index of the first example (dimension 0) where ``mask`` is true anywhere."""
    return int(mask.reshape(len(mask), -1).any(1).nonzero()[0, 0])
