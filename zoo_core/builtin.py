"""The zoo's own datasets and metrics, registered through the same hooks as any plugin."""
from zoo_core.hookspecs import hookimpl

__version__ = "0.1.0"


@hookimpl
def register_datasets(register):
    from zoo_core.data.array import ArrayDataModule
    from zoo_core.data.cifar10 import CIFAR10DataModule
    from zoo_core.data.digits import DigitsDataModule
    from zoo_core.data.image_folder import ImageFolderDataModule
    from zoo_core.data.mnist import MNISTDataModule
    from zoo_core.data.toy import TOY_DATASETS

    for name, cls in TOY_DATASETS.items():
        register(name, cls)
    register("digits", DigitsDataModule)
    register("mnist", MNISTDataModule)
    register("cifar10", CIFAR10DataModule)
    register("array", ArrayDataModule)  # the user's own file or in-memory array
    register("image_folder", ImageFolderDataModule)  # the user's own folder of PNG/JPEG images


@hookimpl
def register_metrics(register):
    from zoo_core.metrics.frechet import FrechetDistance
    from zoo_core.metrics.nll import NLL
    from zoo_core.metrics.precision_recall import PrecisionRecall
    from zoo_core.metrics.reconstruction import Reconstruction
    from zoo_core.metrics.sample_quality import SampleQuality

    register("nll", NLL)
    register("sample_quality", SampleQuality)
    register("frechet", FrechetDistance)
    register("precision_recall", PrecisionRecall)
    register("reconstruction", Reconstruction)
