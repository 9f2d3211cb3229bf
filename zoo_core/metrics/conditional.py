"""Metrics of label-conditional models: classifying with the model, and the class of its samples.

- ``generative_classifier``: a conditional density model is a classifier by Bayes' rule,
  y_hat(x) = argmax_y log p(x | y) + log p(y) (Ng & Jordan 2001, "On Discriminative vs. Generative
  Classifiers"), with p(y) the model's class prior (the training class frequencies; uniform for
  a model without one). Its accuracy on the evaluated split measures how much of the class
  structure the conditional densities hold. For a bound family log p(x | y) is the family's bound,
  so the bound classifies. A stochastic bound (the importance-weighted bound, the diffusion bound
  over sampled timesteps) is estimated for every class with the same random draws (common random
  numbers: the RNG is reseeded identically before each class), so the comparison across classes
  is paired and its noise does not pick the class.
- ``conditional_samples``: n samples per class from ``model.sample((n,), context=k)`` are labelled
  by the zoo's feature classifier of the dataset (``zoo_core.metrics.classifier``: ten digits and a
  "structureless" class); the accuracy against the requested class says whether samples of class k
  look like class k (the classification accuracy score of Ravuri & Vinyals 2019 asks a related
  question the other way round). Also the per-class Fréchet distance (in the classifier's features)
  between the samples of class k and the split's examples of class k, averaged over classes.

Both apply only to conditional models with class labels, and need the split's labels, which
``GenerativeModel.test_step`` passes as ``context``.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from zoo_core.errors import ZooError
from zoo_core.metrics.base import Metric, all_reduce_sum
from zoo_core.metrics.classifier import has_classifier
from zoo_core.metrics.features import DEFAULT_SAMPLES, SEED, HeldOut, feature_module, space_description
from zoo_core.metrics.frechet import frechet_distance

log = logging.getLogger("zoo")
DIGIT_CLASSES = 10  # the feature classifiers' classes 0-9; class 10 is "structureless"


def _labelled(model) -> bool:
    """A conditional model of class labels (not of a general context tensor)."""
    return bool(model.is_conditional and model.num_classes and not tuple(model.data_spec.context_shape))


def class_log_prior(model) -> tuple[Tensor, str]:
    """(log p(y) (C,), where it comes from): the model's ``class_prior`` where it has one, else uniform."""
    prior = getattr(model, "class_prior", None)
    if prior is not None and hasattr(prior, "log_probs"):
        return prior.log_probs().detach().double(), "the model's class prior (training class frequencies)"
    c = int(model.num_classes)
    return torch.full((c,), -math.log(c), dtype=torch.float64), "a uniform class prior"


class GenerativeClassifierAccuracy(Metric):
    """Accuracy of argmax_y log p(x | y) + log p(y) against the split's labels."""

    name = "generative_classifier"
    summary = ("conditional models: accuracy of the Bayes classifier argmax_y log p(x|y) + log p(y) built from "
               "the model's (bound on the) likelihood")

    def applies_to(self, model) -> bool:
        return _labelled(model) and model.likelihood != "none"

    def describe(self, model) -> str:
        what = "the exact log-likelihood" if model.likelihood == "exact" else \
            f"the bound ({model.likelihood_description()}): the bound classifies, not the exact likelihood"
        return (f"generative-classifier accuracy: argmax_y log p(x | y) + log p(y) over {model.num_classes} classes, "
                f"log p(x | y) from {what}, p(y) {class_log_prior(model)[1]}; against the split's labels"
                + ("" if model.likelihood == "exact" else
                   "; every class's bound estimated with the same random draws (common random numbers)"))

    def reset(self) -> None:
        self._sums = torch.zeros(2, dtype=torch.float64)  # [correct, count]

    def update(self, model, x: Tensor, context: Tensor | None = None) -> None:
        if context is None:  # a split without labels: nothing to score
            return
        labels = context.reshape(-1).to(model.device).long()  # (N,)
        prior, _ = class_log_prior(model)
        seed = int(torch.randint(2 ** 62, (1,)))  # one draw per batch from the seeded global RNG
        devices = [model.device] if model.device.type == "cuda" else []
        per_class = []
        for c in range(int(model.num_classes)):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)  # the same random draws for every class (common random numbers)
                per_class.append(model.log_prob(x, torch.full_like(labels, c)).double().reshape(-1))
        scores = torch.stack(per_class, dim=1)  # (N, C) log p(x | c)
        scores = scores + prior.to(scores.device)
        correct = (scores.argmax(1) == labels).double().sum()
        batch = torch.stack([correct, torch.tensor(float(len(labels)), dtype=torch.float64, device=correct.device)])
        self._sums = self._sums.to(batch.device) + batch

    def compute(self, model) -> dict[str, Any]:
        correct, count = all_reduce_sum(self._sums).tolist()
        if count == 0:
            return {}
        return {"generative_classifier_accuracy": correct / count, "generative_classifier_examples": int(count)}


class ConditionalSampleAccuracy(Metric):
    """Feature-classifier accuracy of samples drawn for each class, and the mean per-class Fréchet distance."""

    name = "conditional_samples"
    summary = ("conditional models of digits, MNIST or CIFAR-10: accuracy of the zoo's classifier of the dataset on "
               "samples drawn for each class, and the mean per-class Fréchet distance in its features")

    def __init__(self, **settings: Any):
        super().__init__(**settings)
        self.total = int(settings.get("quality_samples") or DEFAULT_SAMPLES)
        self.held_out, self.labels = HeldOut(), HeldOut()

    def per_class(self, model) -> int:
        return max(2, self.total // int(model.num_classes))

    def applies_to(self, model) -> bool:
        spec = model.data_spec
        return _labelled(model) and spec.is_image and has_classifier(spec.name) and model.num_classes == DIGIT_CLASSES

    def describe(self, model) -> str:
        return (f"{self.per_class(model)} samples per class from sample(n, context=k), labelled by "
                f"{space_description(model)}: cond_sample_accuracy = fraction labelled k (a 'structureless' "
                f"label counts as wrong; cond_sample_structureless is its rate); cond_fd_class_mean = mean over "
                f"classes of the Fréchet distance between class k's samples and the split's class-k examples "
                f"(n = min(samples, examples) per class, so biased upwards on small splits: compare runs of "
                f"the same split only)" + ("; images clamped to [0, 1]" if model.data_spec.is_image else ""))

    def reset(self) -> None:
        self.held_out.reset()
        self.labels.reset()

    def update(self, model, x: Tensor, context: Tensor | None = None) -> None:
        if context is not None:
            self.held_out.update(x)
            self.labels.update(context.reshape(-1).float())

    @torch.no_grad()
    def compute(self, model) -> dict[str, Any]:
        try:
            feature = feature_module(model)
        except ZooError as exc:
            log.warning("zoo: metric %s skipped: %s", self.name, exc)
            return {"cond_sample_classifier": f"not available: {exc}"}
        data, labels = self.held_out.gathered(), self.labels.gathered().long()
        n = self.per_class(model)
        correct = structureless = 0
        fds = []
        devices = [model.device] if model.device.type == "cuda" else []
        for k in range(int(model.num_classes)):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(SEED + k)
                samples = model.sample((n,), context=k).detach().float().cpu()  # (n, *event_shape)
            predicted = feature.net.head(feature(samples)).argmax(1).cpu()  # (n,) in 0..10
            correct += int((predicted == k).sum())
            structureless += int((predicted == DIGIT_CLASSES).sum())
            real = data[labels == k] if len(labels) else data[:0]
            m = min(n, len(real))
            if m >= 2 and torch.isfinite(samples).all():
                fds.append(frechet_distance(real[:m], samples[:m], feature))
        total = n * int(model.num_classes)
        out: dict[str, Any] = {"cond_sample_accuracy": correct / total,
                               "cond_sample_structureless": structureless / total, "cond_samples_per_class": n}
        if fds:
            out["cond_fd_class_mean"] = sum(fds) / len(fds)
        return out
