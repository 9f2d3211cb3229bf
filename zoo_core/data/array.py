"""``array``: the user's own data from one file (or an in-memory array), no plugin needed.

    data: {name: array, path: points.npy}
    data: {name: array, path: images.npz, key: x, labels: y, levels: 256, representation: dequantized}
    data: {name: array, path: table.csv, label_column: class}

Formats, chosen by the file's suffix:

- ``.npy``: one array (``numpy.load(allow_pickle=False)``: object arrays are refused);
- ``.npz``: several arrays; ``key`` names the data (default: the first array that is not the labels);
- ``.pt``: ``torch.load(weights_only=True)`` of a tensor or a dict of tensors (``key`` as for .npz);
- ``.csv``: numbers separated by commas, one example per row; a first row with a non-numeric cell is
  a header. ``label_column`` (a header name or a 0-based index) holds the labels: integers, or
  names (then classes are the sorted names, numbered 0..K-1, listed in the spec's ``class_names``).

``labels``: a key of the same .npz/.pt file (a column of the same .csv file), or a second file (any of
the formats above) holding one label per example. Event shape from the array: (N, D) vectors, (N, C, H, W) images; (N,) is read as
(N, 1) and (N, H, W) as grey images (N, 1, H, W). See ``zoo_core.data.user`` for ``levels``, the
split and how paths are found.

From Python: ``ArrayDataModule.from_array(x, y=None, **options)`` with a numpy array or a tensor.
"""
from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from zoo_core.data.user import DEFAULT_SPLIT, UserDataModule, as_events, check_label_values, check_values, resolve_path
from zoo_core.errors import ConfigError, DataError

SUFFIXES = (".npy", ".npz", ".pt", ".csv")


# ---- readers: each returns {name: tensor} in file order, naming the file in every error ------------------
def _tensor(a, where: str) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach().cpu()
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise DataError(f"{where}: expected a numeric array, got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.dtype.itemsize > 1:  # torch has no uint16/32/64 arithmetic
        a = a.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(a))


def read_npy(path: Path) -> dict[str, Tensor]:
    try:
        a = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(f"{path}: holds Python objects; expected a numeric array") from None
        raise DataError(f"{path}: cannot read as a .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read as a .npy array ({exc})") from None
    if not isinstance(a, np.ndarray):
        raise DataError(f"{path}: expected one array in a .npy file, got {type(a).__name__}")
    return {"": _tensor(a, str(path))}


def read_npz(path: Path) -> dict[str, Tensor]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            out = {}
            for name in archive.files:
                try:
                    out[name] = _tensor(archive[name], f"{path}, array '{name}'")
                except ValueError as exc:
                    if "allow_pickle" not in str(exc):
                        raise
                    raise DataError(f"{path}, array '{name}': holds Python objects; expected a numeric array") \
                        from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read as a .npz archive ({exc})") from None
    if not out:
        raise DataError(f"{path}: the .npz archive holds no arrays")
    return out


def read_pt(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused (not plain tensors), truncated or not a torch file
        first = " ".join(str(exc).split())[:200]
        raise DataError(f"{path}: cannot load with torch.load(weights_only=True) ({first}); expected a tensor or a "
                        f"dict of tensors") from None
    if isinstance(obj, Tensor):
        return {"": obj.detach()}
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return {str(k): v.detach() for k, v in obj.items()}
    if isinstance(obj, dict):
        bad = next((f"'{k}': {type(v).__name__}" for k, v in obj.items() if not isinstance(v, Tensor)), "empty")
        raise DataError(f"{path}: expected a tensor or a dict of tensors, got a dict with {bad}")
    raise DataError(f"{path}: expected a tensor or a dict of tensors, got {type(obj).__name__}")


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def read_csv(path: Path, label_column=None) -> tuple[dict[str, Tensor], list[str] | None]:
    """Numeric CSV -> ({"": (N, K) float64 tensor, "<label>": labels}, class names or None).

    The label column (a header name or 0-based index) may hold integers or names."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as a CSV text file ({exc})") from None
    rows = [(i + 1, row) for i, row in enumerate(csv.reader(io.StringIO(text)))
            if row and any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{path}: the CSV file has no rows")
    header = None
    if any(_number(cell) is None for cell in rows[0][1]):
        header = [cell.strip() for cell in rows[0][1]]
        rows = rows[1:]
        if not rows:
            raise DataError(f"{path}: the CSV file has a header but no data rows")
    width = len(header) if header is not None else len(rows[0][1])
    column = None
    if label_column is not None:
        if isinstance(label_column, str) and not label_column.lstrip("-").isdigit():
            if header is None or label_column not in header:
                raise DataError(f"{path}: no column '{label_column}' for the labels "
                                f"({'columns: ' + ', '.join(header) if header else 'the file has no header row'})")
            column = header.index(label_column)
        else:
            column = int(label_column)
            if not -width <= column < width:
                raise DataError(f"{path}: label column {column} out of range: rows have {width} cells")
            column %= width
    values = np.empty((len(rows), width - (column is not None)), dtype=np.float64)
    names: list[str] = []
    for r, (line, row) in enumerate(rows):
        if len(row) != width:
            raise DataError(f"{path}: line {line} has {len(row)} cells, expected {width} (a ragged CSV)")
        cells = [c.strip() for c in row]
        if column is not None:
            names.append(cells.pop(column))
        for c, cell in enumerate(cells):
            v = _number(cell)
            if v is None:
                col = c + (column is not None and c >= column)
                raise DataError(f"{path}: line {line}, column {col + 1}: {cell!r} is not a number")
            values[r, c] = v
    out = {"": torch.from_numpy(values)}
    class_names = None
    if column is not None:
        numbers = [_number(n) for n in names]
        if all(v is not None for v in numbers):
            out["<label>"] = torch.tensor(numbers, dtype=torch.float64)
        else:  # class names: sorted, numbered 0..K-1
            class_names = sorted(set(names))
            index = {n: k for k, n in enumerate(class_names)}
            out["<label>"] = torch.tensor([index[n] for n in names], dtype=torch.int64)
    return out, class_names


def read_file(path: Path, label_column=None) -> tuple[dict[str, Tensor], list[str] | None]:
    """Any supported file -> ({name: tensor}, class names from a CSV label column or None)."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type '{path.suffix or '(none)'}'; expected one of "
                        f"{', '.join(SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    if suffix == ".csv":
        return read_csv(path, label_column)
    if label_column is not None:
        raise ConfigError(f"{path}: data.label_column is for .csv files; use data.labels for {suffix} files")
    return {".npy": read_npy, ".npz": read_npz, ".pt": read_pt}[suffix](path), None


def _pick(arrays: dict[str, Tensor], key, exclude, where: str) -> Tensor:
    """The array named ``key``, else the first one that is not ``exclude``."""
    if key is not None:
        if str(key) not in arrays:
            raise DataError(f"{where}: no array '{key}' (it holds {', '.join(repr(k) for k in arrays) or 'none'})")
        return arrays[str(key)]
    for name, a in arrays.items():
        if name != exclude and name != "<label>":
            return a
    raise DataError(f"{where}: no data array besides the labels")


class ArrayDataModule(UserDataModule):
    """The user's array: a file (``path``) or an in-memory array (``from_array``); see the module docstring."""

    name = "array"
    representations = ("continuous", "dequantized", "binarized")

    def __init__(self, path: str | None = None, key: str | None = None, labels: str | None = None,
                 label_column: str | int | None = None, levels: int | None = None, split=DEFAULT_SPLIT,
                 conditional: bool = False, **base_kwargs):
        given = getattr(self, "_given", None)  # (x, y) from ``from_array``
        self.labelled = labels is not None or label_column is not None or (given is not None and given[1] is not None)
        super().__init__(levels=levels, split=split, conditional=conditional, **base_kwargs)
        self.key, self.labels_option, self.label_column = key, labels, label_column
        self.path = None if given is not None else resolve_path(path, self.data_dir, self.name)

    @classmethod
    def from_array(cls, x, y=None, **options) -> "ArrayDataModule":
        """A datamodule over an in-memory array ``x`` (numpy or torch, (N, D) or (N, C, H, W)) and
        optional labels ``y`` (N,); ``options`` as in a registry entry (``levels``, ``split``,
        ``representation``, ``conditional``, ``seed``, ``batch_size``, ...)."""
        for name in ("path", "key", "labels", "label_column"):
            if name in options:
                raise ConfigError(f"dataset 'array': from_array takes the data itself, not '{name}'")
        obj = cls.__new__(cls)
        obj._given = (x, y)
        cls.__init__(obj, **options)
        return obj

    def describe_source(self) -> str:
        return f"dataset 'array' ({self.path if self.path is not None else 'in-memory array'})"

    def read(self) -> tuple[Tensor, Tensor | None]:
        where = self.describe_source()
        given = getattr(self, "_given", None)
        if given is not None:
            x = as_events(_tensor(given[0], where), where)
            x = check_values(x, self.num_levels, where)
            y = None if given[1] is None else check_label_values(_tensor(given[1], f"{where}, labels"), len(x),
                                                                 f"{where}, labels")
            return x, y
        path = self.path
        label_column = self.label_column
        if (label_column is None and self.labels_option is not None and path.suffix.lower() == ".csv"
                and not resolve_path(self.labels_option, self.data_dir, self.name).is_file()):
            label_column = self.labels_option  # labels: a column of the CSV file itself
        arrays, class_names = read_file(path, label_column)
        label_key = None
        y = None
        if label_column is not None:
            y, label_where = arrays["<label>"], f"{path}, label column {label_column!r}"
            self.class_names = class_names
        elif self.labels_option is not None:
            label_key = str(self.labels_option)
            if label_key in arrays and label_key != "":
                y, label_where = arrays[label_key], f"{path}, array '{label_key}'"
            else:
                label_path = resolve_path(label_key, self.data_dir, self.name)
                if label_path.suffix.lower() not in SUFFIXES or not label_path.exists():
                    keys = ", ".join(repr(k) for k in arrays if k) or "no named arrays"
                    raise DataError(f"{where}: labels {label_key!r} is neither an array of {path.name} ({keys}) "
                                    f"nor a file ({', '.join(SUFFIXES)})")
                label_arrays, names = read_file(label_path)
                y = _pick(label_arrays, None, None, str(label_path))
                if y.dim() == 2 and y.shape[1] == 1:
                    y = y[:, 0]
                label_where = str(label_path)
                self.class_names = names
        x = _pick(arrays, self.key, label_key, str(path))
        where = str(path) + (f", array '{self.key}'" if self.key is not None else "")
        x = check_values(as_events(x, where), self.num_levels, where)
        if y is not None:
            y = check_label_values(y, len(x), label_where)
        return x, y

