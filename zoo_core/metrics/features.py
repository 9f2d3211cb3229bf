"""What the sample metrics (Fréchet distance, KID, precision/recall) share: the held-out data, the
model's samples and the feature space they are compared in.

- Held-out data: the whole evaluated split, gathered from every DDP rank in the split's order
  (rank r of w holds examples r, r + w, ...), then a fixed-seed random ``2 n`` of it, cut into a
  reference half and a second half; so the result does not depend on the number of processes.
  (Not the first ``2 n``: splits need not be shuffled; MNIST's t10k puts its two writer populations
  in its two halves, and the first 4000 test images against the rest give a classifier-feature FD
  about ten times the floor.) The split is held in float32 on the CPU (31 MB for MNIST's test set).
- Samples: ``n`` draws from ``model.sample`` under the fixed seed of the sample-quality metric,
  made once per model state and shared by the metrics of one evaluation (every rank draws the
  same ones).
- Feature space: for image datasets with a classifier recipe (digits, mnist) the penultimate layer
  of the zoo's classifier (see ``zoo_core.metrics.classifier``); for every other image dataset
  (CIFAR-10, the user's arrays and image folders) the features of a fixed, seeded, untrained CNN
  (label-free; ``zoo_core.metrics.random_features``); for other data (2-D toy sets, vectors) the data
  space itself. The results name the space used (``fd_feature_extractor``, ``pr_space``).
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from zoo_core.errors import ZooError
from zoo_core.metrics.base import Metric
from zoo_core.metrics.classifier import FeatureExtractor, broadcast_weights, get_feature_extractor, has_classifier
from zoo_core.metrics.random_features import RandomConvFeatures

log = logging.getLogger("zoo")

DEFAULT_SAMPLES = 2000
SEED = 2024  # the one seed of every sample metric: samples, held-out subsets, projections


def world() -> tuple[int, int]:
    """(world size, rank); (1, 0) outside DDP."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class HeldOut:
    """Collects the evaluated split across DDP ranks, in the split's order."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._parts: list[Tensor] = []

    def update(self, x: Tensor) -> None:
        self._parts.append(x.detach().float().cpu())

    def gathered(self) -> Tensor:
        """(N, *event_shape): the whole split, in order, on every rank."""
        local = torch.cat(self._parts) if self._parts else torch.zeros(0)
        size, _ = world()
        if size == 1:
            return local
        parts: list = [None] * size
        dist.all_gather_object(parts, local)
        index = torch.cat([r + size * torch.arange(len(p)) for r, p in enumerate(parts)])  # (N,) positions
        return torch.cat([p for p in parts if len(p)])[torch.argsort(index)]


def split_halves(data: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """A fixed-seed random 2 n rows of ``data`` (N >= 2 n rows), as the reference half and the other half."""
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(SEED))[: 2 * n]
    return data[perm[:n]], data[perm[n:]]


def _weights_key(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if tensor.numel() else b"")
    return h.hexdigest()


@torch.no_grad()
def model_samples(model, n: int) -> Tensor:
    """``n`` samples (n, *event_shape), float32 on the CPU, seeded; cached for the model's current weights."""
    key = (n, bool(model.training), _weights_key(model))  # BatchNorm/dropout sample differently in training
    cache: dict[Any, Tensor] = getattr(model, "_zoo_sample_cache", None) or {}
    if key not in cache:
        devices = [model.device] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(SEED)
            samples = model.sample((n,), context=_labels_for_marginal(model, n))  # shape-checked by the model
            samples = samples.detach().float().cpu()
        cache = {key: samples}  # only the latest model state is kept
        object.__setattr__(model, "_zoo_sample_cache", cache)
    return cache[key]


def _labels_for_marginal(model, n: int) -> Tensor | None:
    """A conditional model that cannot sample its marginal gets n labels drawn uniformly (seeded by
    the caller), so its samples are compared with the whole split; other models get None."""
    if not getattr(model, "is_conditional", False) or model.samples_marginal or model.data_spec.context_shape:
        return None
    return torch.randint(int(model.num_classes), (n,), device=model.device)


def uses_classifier(model) -> bool:
    """Whether ``model``'s data are compared in the zoo's trained classifier features (digits, mnist)."""
    spec = model.data_spec
    return bool(spec.is_image) and has_classifier(spec.name)


def uses_random_features(model) -> bool:
    """Whether ``model``'s data are images without a classifier recipe (compared in random-CNN features)."""
    spec = model.data_spec
    return bool(spec.is_image) and not has_classifier(spec.name)


def applies(model) -> bool:
    """Every dataset: classifier features, random-CNN features or the data space."""
    return True


_RANDOM: dict[tuple, RandomConvFeatures] = {}


def random_features_for(model) -> RandomConvFeatures:
    """The fixed random CNN for ``model``'s image shape (built once per shape: same weights everywhere)."""
    spec = model.data_spec
    key = (spec.name, tuple(spec.event_shape))
    if key not in _RANDOM:
        _RANDOM[key] = RandomConvFeatures(spec.event_shape, spec.name)
    return _RANDOM[key]


def data_dir_of(model):
    trainer = getattr(model, "_trainer", None)
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    return getattr(datamodule, "data_dir", None)


def extractor_for(model) -> FeatureExtractor | None:
    """The classifier features for image data; None for data compared in data space."""
    if not uses_classifier(model):
        return None
    spec = model.data_spec
    return get_feature_extractor(spec.name, spec.representation, data_dir_of(model))


class Flatten(nn.Module):
    """The data-space 'feature extractor': (N, *event_shape) -> (N, D), for torchmetrics."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(len(x), -1).float()


def feature_module(model) -> nn.Module:
    """The feature map for ``model``'s data: the classifier (rank 0's weights on every DDP rank) or Flatten.
    Raises ZooError when the classifier can be neither loaded nor trained (e.g. an unwritable cache)."""
    if uses_random_features(model):
        return random_features_for(model)  # seeded: identical on every rank without a broadcast
    extractor = extractor_for(model)
    if extractor is None:
        return Flatten(model.data_spec.dims)
    broadcast_weights(extractor)
    return extractor


def space_description(model) -> str:
    """What the features are, e.g. 'data space (2-D)', the classifier (its feature dim and accuracy) or
    the random CNN."""
    if uses_random_features(model):
        return random_features_for(model).describe()
    if not uses_classifier(model):
        return f"data space ({model.data_spec.dims}-D)"
    try:
        return extractor_for(model).describe()
    except Exception as exc:  # e.g. the data for training it are not found yet: said, not fatal here
        return f"{model.data_spec.name}-{model.data_spec.representation} classifier features (not available: {exc})"


class SampleMetric(Metric):
    """Base of the metrics that compare n model samples with n held-out examples of the evaluated
    split (n = ``eval.quality_samples``, at most half the split)."""

    def __init__(self, **settings: Any):
        super().__init__(**settings)
        self.n = int(settings.get("quality_samples") or DEFAULT_SAMPLES)
        self.held_out = HeldOut()

    def reset(self) -> None:
        self.held_out.reset()

    def update(self, model, x: Tensor, context: Tensor | None = None) -> None:
        self.held_out.update(x)

    def halves(self, minimum: int = 2) -> tuple[Tensor, Tensor] | None:
        """(reference, other half), each (n, *event_shape), from the whole split gathered over ranks;
        None when the split has fewer than 2 * ``minimum`` examples."""
        data = self.held_out.gathered()
        n = min(self.n, len(data) // 2)
        return split_halves(data, n) if n >= minimum else None


class FeatureSampleMetric(SampleMetric):
    """A sample metric computed in ``feature_module``'s space: the zoo classifier's features for
    digits and MNIST, random-CNN features for other images, the data space for other data."""

    #: the result key that says where the metric was computed (set by subclasses)
    space_key: str = ""

    def applies_to(self, model) -> bool:
        return applies(model)

    def prepare(self, model, minimum: int = 2) -> tuple[Tensor, Tensor, Tensor, nn.Module] | dict[str, Any]:
        """(reference, other half, samples, feature map), each set (n, *event_shape); or the results to
        return instead: {} when the split is too small, a note when the feature map is not available
        (reported in metrics.json rather than losing the whole evaluation)."""
        halves = self.halves(minimum)
        if halves is None:
            return {}
        try:
            feature = feature_module(model)
        except ZooError as exc:
            log.warning("zoo: metric %s skipped: %s", self.name, exc)
            return {self.space_key: f"not available: {exc}"}
        reference, other_half = halves
        return reference, other_half, model_samples(model, len(reference)), feature
