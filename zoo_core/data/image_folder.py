"""``image_folder``: a directory of PNG/JPEG images (read with Pillow), no plugin needed.

    data: {name: image_folder, path: my_images/, size: [32, 32], channels: 3}

- Images directly in ``path``: an unlabelled dataset. Images in subfolders of ``path`` (one level):
  the subfolders are the classes, their sorted names numbered 0..K-1 (listed in the spec's
  ``class_names``), the labels of a conditional model with ``conditional: true``.
- ``channels``: 1 (grey) or 3 (RGB); default 1 when every image is greyscale, else 3.
- ``size``: resize every image to [H, W] (or one number for a square; Pillow's bilinear filter);
  without it all images must have the same size.
- Pixels are 8-bit, so the data have 256 levels: ``dequantized`` (the default; bits/dim of the 8-bit
  images) or ``binarized`` (Bernoulli of the intensities k / 255), as for MNIST.

Files are read in sorted order (class, then file name), then split by the seeded permutation of
``zoo_core.data.user``. Other files (any other suffix, hidden files) are ignored.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from zoo_core.data.user import DEFAULT_SPLIT, UserDataModule, resolve_path
from zoo_core.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def find_images(root: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """(image files, their class indices or None, the class names or None) under ``root``."""
    if not root.exists():
        raise DataError(f"{root}: no such directory; expected a folder of PNG/JPEG images")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; expected a folder of PNG/JPEG images (use name: array for files)")
    top = _images_in(root)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = [(d, _images_in(d)) for d in subdirs]
    classes = [(d, files) for d, files in classes if files]
    if top and classes:
        raise DataError(f"{root}: has images both at its top level ({top[0].name}, ...) and in class subfolders "
                        f"({classes[0][0].name}/, ...); expected one or the other")
    if top:
        return top, None, None
    if not classes:
        raise DataError(f"{root}: no images found; expected PNG/JPEG files ({', '.join(IMAGE_SUFFIXES)}) in the "
                        f"folder or in one subfolder per class")
    files, labels = [], []
    for k, (_, members) in enumerate(classes):
        files += members
        labels += [k] * len(members)
    return files, labels, [d.name for d, _ in classes]


def _size(size, dataset: str) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)):
        raise ConfigError(f"dataset '{dataset}': data.size must be [height, width] (positive integers) or one "
                          f"integer, got {size!r}")
    return int(size[0]), int(size[1])


class ImageFolderDataModule(UserDataModule):
    """PNG/JPEG images from a folder; see the module docstring."""

    name = "image_folder"
    representations = ("dequantized", "binarized")

    def __init__(self, path: str | None = None, size: int | list[int] | None = None, channels: int | None = None,
                 split=DEFAULT_SPLIT, conditional: bool = False, **base_kwargs):
        super().__init__(levels=256, split=split, conditional=conditional, **base_kwargs)
        if channels not in (None, 1, 3):
            raise ConfigError(f"dataset '{self.name}': data.channels must be 1 (grey) or 3 (RGB), got {channels!r}")
        self.size = _size(size, self.name)
        self.channels = channels
        self.path = resolve_path(path, self.data_dir, self.name)

    def describe_source(self) -> str:
        return f"dataset 'image_folder' ({self.path})"

    def read(self) -> tuple[Tensor, Tensor | None]:
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError as exc:  # pragma: no cover - Pillow is a dependency
            raise DataError(f"dataset 'image_folder' needs Pillow (pip install Pillow): {exc}") from None
        files, labels, class_names = find_images(self.path)
        images = []
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    images.append(im.copy())
            except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
                first = " ".join(str(exc).split())[:160]
                raise DataError(f"{f}: cannot read this image ({first}); expected a PNG or JPEG file") from None
        channels = self.channels or (1 if all(im.mode in GREY_MODES for im in images) else 3)
        mode = "L" if channels == 1 else "RGB"
        first_size = images[0].size  # (width, height)
        arrays = []
        for f, im in zip(files, images):
            if self.size is not None:
                im = im.convert(mode).resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
            elif im.size != first_size:
                raise DataError(f"{f}: image of {im.size[0]}x{im.size[1]} pixels, but {files[0].name} has "
                                f"{first_size[0]}x{first_size[1]}; set data.size to resize them all")
            a = np.asarray(_eight_bit(im, mode), dtype=np.uint8)  # (H, W) or (H, W, 3)
            arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))  # (C, H, W)
        x = torch.from_numpy(np.stack(arrays))  # (N, C, H, W) uint8 levels 0..255
        self.class_names = class_names
        y = torch.tensor(labels, dtype=torch.int64) if labels is not None else None  # (N,)
        return x, y


def _eight_bit(im, mode: str):
    """An image in 8-bit ``mode`` (16-bit greyscale is scaled to 8 bits, not clipped)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I") and mode == "L":
        a = np.asarray(im, dtype=np.float64)
        return np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)
    return im.convert(mode)
