"""Datamodules (toy 2-D, sklearn digits, MNIST, CIFAR-10, the user's arrays and image folders) and the
likelihood bookkeeping of representations.

The datamodules import torch and Lightning; they load on first attribute access, so that reading
``DataSpec``/``REPRESENTATIONS`` (the registry does) stays light."""
from zoo_core.data.spec import REPRESENTATIONS, DataSpec

__all__ = ["DataSpec", "REPRESENTATIONS", "ZooDataModule"]


def __getattr__(name: str):
    if name == "ZooDataModule":
        from zoo_core.data.base import ZooDataModule

        return ZooDataModule
    raise AttributeError(f"module 'zoo_core.data' has no attribute {name!r}")
