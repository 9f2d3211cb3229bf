"""The zoo's own datasets and metrics, registered through the same hooks as any plugin.

Registered as lazy references: listing them imports nothing heavy; each module is imported when a
run first needs it."""
from zoo_core.hookspecs import hookimpl
from zoo_core.plugins import Lazy

__version__ = "0.1.0"

DATASETS = {
    "moons": "zoo_core.data.toy:MoonsDataModule",
    "8gaussians": "zoo_core.data.toy:EightGaussiansDataModule",
    "checkerboard": "zoo_core.data.toy:CheckerboardDataModule",
    "rings": "zoo_core.data.toy:RingsDataModule",
    "spirals": "zoo_core.data.toy:SpiralsDataModule",
    "digits": "zoo_core.data.digits:DigitsDataModule",
    "mnist": "zoo_core.data.mnist:MNISTDataModule",
    "cifar10": "zoo_core.data.cifar10:CIFAR10DataModule",
    "array": "zoo_core.data.array:ArrayDataModule",  # the user's own file or in-memory array
    "image_folder": "zoo_core.data.image_folder:ImageFolderDataModule",  # the user's own PNG/JPEG folder
}

# name: (class, the result keys it writes: what `expected:` entries and the leaderboard may name)
METRICS = {
    "nll": ("zoo_core.metrics.nll:NLL",
            ["nll_nats", "nll_nats_stderr", "bits_per_dim", "num_examples", "nll_gap_nats", "true_entropy_nats"]),
    "sample_quality": ("zoo_core.metrics.sample_quality:SampleQuality",
                       ["mmd2", "mmd2_data_floor", "sliced_wasserstein", "sliced_wasserstein_data_floor",
                        "quality_samples"]),
    "frechet": ("zoo_core.metrics.frechet:FrechetDistance",
                ["fd", "fd_data_floor", "fd_feature_extractor", "fd_num_samples"]),
    "kid": ("zoo_core.metrics.kid:KernelInceptionDistance",
            ["kid", "kid_std", "kid_data_floor", "kid_num_samples", "kid_subset_size", "kid_feature_extractor"]),
    "precision_recall": ("zoo_core.metrics.precision_recall:PrecisionRecall",
                         [f"{k}{s}" for k in ("precision", "recall", "density", "coverage")
                          for s in ("", "_data_floor")] + ["pr_k", "pr_num_samples", "pr_space"]),
    "generative_classifier": ("zoo_core.metrics.conditional:GenerativeClassifierAccuracy",
                              ["generative_classifier_accuracy", "generative_classifier_examples"]),
    "conditional_samples": ("zoo_core.metrics.conditional:ConditionalSampleAccuracy",
                            ["cond_sample_accuracy", "cond_sample_structureless", "cond_samples_per_class",
                             "cond_fd_class_mean", "cond_sample_classifier"]),
    "reconstruction": ("zoo_core.metrics.reconstruction:Reconstruction",
                       ["reconstruction_bce_nats", "reconstruction_bce_nats_stderr", "reconstruction_mse"]),
}


@hookimpl
def register_datasets(register):
    for name, target in DATASETS.items():
        register(name, Lazy(target))


@hookimpl
def register_metrics(register):
    for name, (target, keys) in METRICS.items():
        register(name, Lazy(target, keys=keys))
