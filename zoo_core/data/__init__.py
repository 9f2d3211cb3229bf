"""Datamodules (toy 2-D, sklearn digits, MNIST, CIFAR-10, the user's arrays and image folders) and the likelihood bookkeeping of representations."""
from zoo_core.data.base import ZooDataModule
from zoo_core.data.spec import REPRESENTATIONS, DataSpec

__all__ = ["DataSpec", "REPRESENTATIONS", "ZooDataModule"]
