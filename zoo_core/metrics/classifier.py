"""Small seeded classifiers whose hidden features define the image sample metrics.

The Fréchet Inception Distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule
Converge to a Local Nash Equilibrium") compares Gaussians fitted to Inception-v3 features of real
and generated images. Inception-v3 knows nothing of 8x8 digits or binarised MNIST and cannot be
downloaded here, so, as is common for MNIST, the zoo trains its own classifier once per image
dataset and representation and uses its penultimate layer as the feature space (for the Fréchet
distance and for precision/recall). Image datasets without a recipe here (the user's arrays and
image folders) use label-free random-CNN features instead
(``zoo_core.metrics.random_features``); the metrics' results name the space they used.

- ``digits`` (8x8): an MLP 64-256-64-11, 200 epochs on the digits training split of seed 0
  (the split ``DigitsDataModule(seed=0)`` makes; runs with another seed evaluate on test digits
  that may be among these), tested on that seed's 300 test digits: 92.3% binarised (one fixed
  binarisation), 97.0% dequantised; about 5-6 s of one CPU core.
- ``mnist`` (28x28): a CNN (two 3x3 conv + max-pool stages, 16 and 32 channels, then 128
  hidden units), 3 epochs on the 50,000 training images, tested on the 10,000 t10k images:
  98.7% binarised; about 40 s of one CPU core.
- ``cifar10`` (3x32x32): the same CNN with 32 and 64 channels, 10 epochs on the 45,000 images of
  the zoo's CIFAR-10 training split, tested on the 10,000 test images (the accuracy of a small
  CNN without augmentation; reported with every figure). The "eleventh class" below is then
  "no object": noise and pixel-shuffled photographs.

Inputs are the dataset's representation in [0, 1]: ``binarized`` classifiers see freshly
binarised images every epoch (Bernoulli of the intensities), ``dequantized`` ones (k + u) / L.

Besides the ten digits, each batch carries an eleventh class of structureless images (uniform
noise at a random intensity, and digits with their pixels shuffled; ``junk_images``). A plain
digit classifier maps such images into the middle of its digit features (on 8x8 digits pure noise
then scored precision 0.73 against held-out digits); with the extra class, the features separate
"no digit at all" from digits. The reported test accuracy is over the ten digit classes of the test
split, a prediction of the junk class counting as an error.

The trained weights are cached at ``$ZOO_CACHE_DIR/classifiers/<dataset>-<representation>-<hash>.pt``
(default ``$XDG_CACHE_HOME/zoo`` or ``~/.cache/zoo``), the hash covering the recipe, with a JSON
file beside it holding the test accuracy. Both are written to a temporary file and renamed into
place; an exclusive file lock makes concurrent processes (DDP ranks, test workers) train once
while the others wait and then load. Training runs on the CPU, seeded, so processes on machines
without a shared cache train identical weights (the metrics also broadcast rank 0's weights).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo_core.checkpoint_io import write_atomic
from zoo_core.errors import DataError

CACHE_ENV = "ZOO_CACHE_DIR"
RECIPE_VERSION = 1
TEST_NOISE_SEED = 4321  # the one fixed binarisation / dequantisation of the classifier's test set

log = logging.getLogger("zoo")


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a classifier's weights (hashed into its cache file name)."""

    arch: str  # "mlp" (flattened input) or "cnn"
    features: int  # width of the penultimate layer = the feature dimension
    hidden: int  # mlp: first hidden width; cnn: channels of the first conv (the second has twice)
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    junk: bool = True  # an 11th class of structureless images (see ``junk_images``)
    seed: int = 0


RECIPES: dict[str, Recipe] = {
    "digits": Recipe(arch="mlp", features=64, hidden=256, epochs=200, batch_size=64, lr=2e-3, weight_decay=1e-4),
    "mnist": Recipe(arch="cnn", features=128, hidden=16, epochs=3, batch_size=128, lr=3e-3, weight_decay=0.0),
    "cifar10": Recipe(arch="cnn", features=128, hidden=32, epochs=10, batch_size=128, lr=2e-3, weight_decay=5e-4),
}


def has_classifier(dataset: str) -> bool:
    return dataset in RECIPES


# ---- networks ------------------------------------------------------------------------------------
class ClassifierNet(nn.Module):
    """``body``: images (N, C, H, W) -> features (N, F), post-ReLU; ``head``: features -> 10 logits."""

    def __init__(self, recipe: Recipe, event_shape: tuple[int, ...]):
        super().__init__()
        c, h, w = event_shape
        if recipe.arch == "mlp":
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, recipe.hidden), nn.ReLU(),
                                      nn.Linear(recipe.hidden, recipe.features), nn.ReLU())
        elif recipe.arch == "cnn":
            k = recipe.hidden
            self.body = nn.Sequential(
                nn.Conv2d(c, k, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),           # (N, k, H/2, W/2)
                nn.Conv2d(k, 2 * k, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (N, 2k, H/4, W/4)
                nn.Flatten(), nn.Linear(2 * k * (h // 4) * (w // 4), recipe.features), nn.ReLU())
        else:  # pragma: no cover - recipes are fixed above
            raise ValueError(f"unknown classifier architecture {recipe.arch!r}")
        self.head = nn.Linear(recipe.features, 11 if recipe.junk else 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class FeatureExtractor(nn.Module):
    """A trained classifier's penultimate layer, as torchmetrics expects a custom FID extractor:
    float images (N, C, H, W) -> (N, num_features) float32, with ``num_features`` set.
    Inputs are clamped to [0, 1] (the range the classifier was trained on). Always in eval mode."""

    def __init__(self, net: ClassifierNet, name: str, accuracy: float, num_features: int, recipe: Recipe):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.name = name
        self.accuracy = float(accuracy)
        self.num_features = int(num_features)
        self.recipe = recipe

    def train(self, mode: bool = True) -> "FeatureExtractor":
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        x = x.to(dtype=torch.float32, device=next(self.net.parameters()).device).clamp(0.0, 1.0)
        return torch.cat([self.net.body(chunk) for chunk in x.split(1000)]) if len(x) else \
            torch.zeros(0, self.num_features)

    def describe(self) -> str:
        r = self.recipe
        arch = (f"MLP {r.hidden}-{r.features}" if r.arch == "mlp"
                else f"CNN conv{r.hidden}-conv{2 * r.hidden}-fc{r.features}")
        return f"{self.name} classifier ({arch}), {self.num_features} features, test accuracy {self.accuracy:.2%}"


# ---- data ------------------------------------------------------------------------------------------
def _labelled_splits(dataset: str, data_dir) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """(train levels (N, 1, H, W) uint8, train labels (N,), test levels, test labels, number of levels)."""
    if dataset == "digits":
        from sklearn.datasets import load_digits

        from zoo_core.data.digits import N_TRAIN, N_VAL

        bunch = load_digits()
        levels = torch.from_numpy(bunch.images.astype("uint8"))[:, None]  # (1797, 1, 8, 8) 0..16
        labels = torch.from_numpy(bunch.target.astype("int64"))  # (1797,)
        perm = torch.randperm(len(levels), generator=torch.Generator().manual_seed(0))  # DigitsDataModule(seed=0)'s split
        train, test = perm[:N_TRAIN], perm[N_TRAIN + N_VAL:]
        return levels[train], labels[train], levels[test], labels[test], 17
    if dataset == "mnist":
        from zoo_core.data.mnist import MNIST_FILES, MNIST_SHAPES, N_TRAIN, find_file, read_idx, resolve_data_dir

        root = resolve_data_dir(data_dir)
        paths = {name: find_file(root, name) for name in MNIST_FILES}
        missing = [name for name, path in paths.items() if path is None]
        if missing:  # never downloads: the datamodule has fetched the files before any metric runs
            raise DataError(f"the MNIST feature classifier needs the MNIST files, not found in {root} "
                            f"(missing {', '.join(missing)})")
        a = {name: read_idx(path, MNIST_SHAPES[name]) for name, path in paths.items()}
        x = torch.from_numpy(a["train-images-idx3-ubyte"][:N_TRAIN].copy())[:, None]  # (50000, 1, 28, 28)
        y = torch.from_numpy(a["train-labels-idx1-ubyte"][:N_TRAIN].astype("int64"))  # (50000,)
        xt = torch.from_numpy(a["t10k-images-idx3-ubyte"].copy())[:, None]  # (10000, 1, 28, 28)
        yt = torch.from_numpy(a["t10k-labels-idx1-ubyte"].astype("int64"))  # (10000,)
        return x, y, xt, yt, 256
    if dataset == "cifar10":
        from zoo_core.data import cifar10
        from zoo_core.data.mnist import resolve_data_dir

        root = resolve_data_dir(data_dir)
        path = cifar10.find_archive(root)
        if path is None:  # never downloads: the datamodule has fetched the archive before any metric runs
            raise DataError(f"the CIFAR-10 feature classifier needs {cifar10.ARCHIVE}, not found in {root}")
        batches = cifar10.read_archive(path, cifar10.ARCHIVE_MD5)
        x = np.concatenate([batches[f][0] for f in cifar10.TRAIN_FILES])  # (50000, 3, 32, 32) uint8
        y = np.concatenate([batches[f][1] for f in cifar10.TRAIN_FILES])  # (50000,)
        n_train = len(x) - min(cifar10.N_VAL, len(x) // 10)  # the datamodule's training split
        xt, yt = batches[cifar10.TEST_FILE]
        return (torch.from_numpy(x[:n_train].copy()), torch.from_numpy(y[:n_train].astype("int64")),
                torch.from_numpy(xt.copy()), torch.from_numpy(yt.astype("int64")), 256)
    raise DataError(f"no classifier recipe for dataset '{dataset}' (known: {', '.join(sorted(RECIPES))})")


def _represent(levels: Tensor, representation: str, num_levels: int, gen: torch.Generator) -> Tensor:
    """Integer levels (N, C, H, W) -> the representation in [0, 1], with noise from ``gen``."""
    x = levels.float()
    if representation == "binarized":
        return torch.bernoulli(x / (num_levels - 1), generator=gen)
    if representation == "dequantized":
        return (x + torch.rand(x.shape, generator=gen)) / num_levels
    raise DataError(f"classifier features need a binarized or dequantized image dataset, got '{representation}'")


def junk_images(x: Tensor, gen: torch.Generator) -> Tensor:
    """Structureless images for the 'not a digit' class, half of each kind: uniform noise at a random
    overall intensity, and the given images with their pixels shuffled (same ink, no strokes).
    x (m, C, H, W) represented images -> (m, C, H, W) in [0, 1], of the same representation."""
    m = len(x)
    flat = x.reshape(m, -1)
    shuffled = torch.gather(flat, 1, torch.argsort(torch.rand(flat.shape, generator=gen), dim=1))
    noise = torch.rand(flat.shape, generator=gen) * torch.rand(m, 1, generator=gen)
    binary = bool(((x == 0) | (x == 1)).all())
    noise = torch.bernoulli(noise, generator=gen) if binary else noise
    pick = torch.rand(m, 1, generator=gen) < 0.5
    return torch.where(pick, noise, shuffled).reshape(x.shape)


# ---- training ----------------------------------------------------------------------------------------
def train_classifier(dataset: str, representation: str, recipe: Recipe, data_dir=None) -> tuple[ClassifierNet, dict]:
    """Train on the CPU, seeded; returns the net and its facts (test accuracy, seconds, sizes).

    Usually called from inside an evaluation (Lightning's test loop runs under inference mode, and
    maybe under bf16/fp16 autocast): gradients and full precision are switched back on here."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", enabled=False))
        return _train_classifier(dataset, representation, recipe, data_dir)


def _train_classifier(dataset: str, representation: str, recipe: Recipe, data_dir) -> tuple[ClassifierNet, dict]:
    x_levels, y, xt_levels, yt, num_levels = _labelled_splits(dataset, data_dir)
    start, cpu_start = time.perf_counter(), time.process_time()
    gen = torch.Generator().manual_seed(recipe.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        net = ClassifierNet(recipe, tuple(x_levels.shape[1:]))
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(x_levels) / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total, pct_start=0.15)
    net.train()
    for _ in range(recipe.epochs):
        x = _represent(x_levels, representation, num_levels, gen)  # fresh noise every epoch
        order = torch.randperm(len(x), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
            inputs, targets = x[idx], y[idx]
            if recipe.junk:  # as many junk images as a digit class gets
                junk = junk_images(inputs[: max(1, len(idx) // 10)], gen)
                inputs = torch.cat([inputs, junk])
                targets = torch.cat([targets, torch.full((len(junk),), 10, dtype=targets.dtype)])
            loss = F.cross_entropy(net(inputs), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    xt = _represent(xt_levels, representation, num_levels, torch.Generator().manual_seed(TEST_NOISE_SEED))
    with torch.no_grad():
        pred = torch.cat([net(chunk).argmax(1) for chunk in xt.split(1000)])
    accuracy = float((pred == yt).float().mean())
    return net, {"test_accuracy": accuracy, "train_seconds": round(seconds, 2),
                 "train_cpu_seconds": round(cpu_seconds, 2), "threads": torch.get_num_threads(),
                 "num_train": len(x_levels), "num_test": len(xt_levels), "event_shape": list(x_levels.shape[1:])}


# ---- the cache ---------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$ZOO_CACHE_DIR``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "zoo"


def recipe_hash(dataset: str, representation: str, recipe: Recipe) -> str:
    text = json.dumps({"version": RECIPE_VERSION, "dataset": dataset, "representation": representation,
                       **asdict(recipe)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def classifier_path(dataset: str, representation: str) -> Path:
    recipe = RECIPES[dataset]
    return cache_dir() / "classifiers" / f"{dataset}-{representation}-{recipe_hash(dataset, representation, recipe)}.pt"


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """An exclusive lock on ``lock_path`` (POSIX flock; no locking where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: atomic renames still keep the cache consistent
        yield
        return
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


CHECK_EXAMPLES = 500  # the fixed test batch a cached classifier is re-checked on at every load
CHECK_TOLERANCE = 0.02  # largest accepted change of its accuracy on that batch


def check_batch(dataset: str, representation: str, data_dir) -> tuple[Tensor, Tensor]:
    """The first CHECK_EXAMPLES test examples (fixed dequantisation noise) and their labels."""
    _, _, xt_levels, yt, num_levels = _labelled_splits(dataset, data_dir)
    xt = _represent(xt_levels[:CHECK_EXAMPLES], representation, num_levels,
                    torch.Generator().manual_seed(TEST_NOISE_SEED))
    return xt, yt[:CHECK_EXAMPLES]


def check_accuracy(net: ClassifierNet, batch: tuple[Tensor, Tensor]) -> float:
    x, y = batch
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def _load(path: Path, meta_path: Path, recipe: Recipe, batch: tuple[Tensor, Tensor]) -> tuple[ClassifierNet, dict] | None:
    """The cached classifier, or None when absent, unreadable or not verified (it is then retrained).

    Verified: the weights' sha256 equals the one recorded beside them, the network is built for the
    dataset's own image shape (not a shape read from the file), and its accuracy on a fixed test
    batch is within CHECK_TOLERANCE of the recorded one, so a loadable but wrong (e.g. all-zero)
    classifier is never used to measure samples."""
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        blob = path.read_bytes()
        if meta.get("weights_sha256") != hashlib.sha256(blob).hexdigest():
            raise ValueError("its weights do not match the recorded sha256")
        net = ClassifierNet(recipe, tuple(batch[0].shape[1:]))
        net.load_state_dict(torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True))
        net.eval()
        accuracy = check_accuracy(net, batch)
        recorded = float(meta["check_accuracy"])
        if abs(accuracy - recorded) > CHECK_TOLERANCE:
            raise ValueError(f"its accuracy on the check batch is {accuracy:.2%}, recorded {recorded:.2%}")
        return net, meta
    except Exception as exc:  # a corrupt, foreign or tampered file: retrain rather than fail the evaluation
        log.warning("zoo: ignoring cached classifier %s (%s); training it again", path, exc)
        return None


_LOADED: dict[str, FeatureExtractor] = {}


def get_feature_extractor(dataset: str, representation: str, data_dir=None) -> FeatureExtractor:
    """The dataset's classifier features, trained once and cached (see the module docstring)."""
    if dataset not in RECIPES:
        raise DataError(f"no classifier recipe for dataset '{dataset}' (known: {', '.join(sorted(RECIPES))})")
    recipe = RECIPES[dataset]
    path = classifier_path(dataset, representation)
    if str(path) in _LOADED:
        return _LOADED[str(path)]
    meta_path = path.with_suffix(".json")
    batch = check_batch(dataset, representation, data_dir)
    loaded = _load(path, meta_path, recipe, batch)
    if loaded is None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create the classifier cache {path.parent} ({exc.strerror or exc}); "
                            f"set {CACHE_ENV} to a writable directory") from None
        with _exclusive(path.with_suffix(".lock")):
            loaded = _load(path, meta_path, recipe, batch)  # another process may have trained it meanwhile
            if loaded is None:
                log.info("zoo: training the %s-%s feature classifier (once; cached in %s)", dataset,
                         representation, path.parent)
                net, meta = train_classifier(dataset, representation, recipe, data_dir)
                meta = {"dataset": dataset, "representation": representation, "recipe": asdict(recipe),
                        "recipe_hash": recipe_hash(dataset, representation, recipe), **meta}
                weights = io.BytesIO()
                torch.save(net.state_dict(), weights)
                meta["weights_sha256"] = hashlib.sha256(weights.getvalue()).hexdigest()
                meta["check_accuracy"] = check_accuracy(net, batch)
                write_atomic(path, weights.getvalue())
                write_atomic(meta_path, json.dumps(meta, indent=2))
                loaded = net, meta
    net, meta = loaded
    extractor = FeatureExtractor(net, f"{dataset}-{representation}", meta["test_accuracy"], recipe.features, recipe)
    _LOADED[str(path)] = extractor
    return extractor


def broadcast_weights(extractor: FeatureExtractor) -> None:
    """Under DDP, give every rank rank 0's classifier weights (no-op in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    holder = [extractor.net.state_dict() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    extractor.net.load_state_dict(holder[0])
