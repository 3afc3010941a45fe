"""Read a legacy (non-zip) torch ``.pth`` state dict with pickle + numpy only.

The legacy format is: magic number pickle, protocol pickle, system-info
pickle, the object pickle (tensors refer to storages by persistent id), a
pickle listing storage keys, then for each key an int64 element count
followed by the raw little-endian bytes. A restricted unpickler only allows
the handful of globals such a file needs, so no arbitrary code can run.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from pathlib import Path

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _TensorRef:
    """Placeholder for a tensor until the storages are read."""

    def __init__(self, key, storage_offset, size, stride):
        self.key, self.offset, self.size, self.stride = key, storage_offset, tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_args):
    return _TensorRef(storage, storage_offset, size, stride)


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f)
        self._storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights file")

    def persistent_load(self, pid):
        typename, data_type, key, _location, size, *_ = pid
        if typename != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {typename!r}")
        self._storages.setdefault(key, (data_type.dtype, size))
        return key


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return ``{name: np.ndarray}`` for a legacy torch state-dict file."""
    with open(path, "rb") as fh:
        f = io.BytesIO(fh.read())
    storages: dict[str, tuple] = {}
    # Every pickle in the file goes through the restricted unpickler (no arbitrary globals).
    if _Unpickler(f, storages).load() != _MAGIC:  # noqa: S301
        raise ValueError(f"{path}: not a legacy torch file (bad magic number)")
    _Unpickler(f, storages).load()  # noqa: S301  protocol version
    _Unpickler(f, storages).load()  # noqa: S301  sys info (endianness, type sizes)
    obj = _Unpickler(f, storages).load()  # noqa: S301
    keys = _Unpickler(f, storages).load()  # noqa: S301
    raw = {}
    for key in keys:
        (count,) = struct.unpack("<q", f.read(8))
        dtype = storages[key][0]
        raw[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
    out = {}
    for name, ref in obj.items():
        buf = raw[ref.key]
        n = int(np.prod(ref.size)) if ref.size else 1
        strides = tuple(s * buf.itemsize for s in ref.stride)
        arr = (
            np.lib.stride_tricks.as_strided(buf[ref.offset :], shape=ref.size, strides=strides)
            if n
            else np.zeros(ref.size, buf.dtype)
        )
        out[name] = np.array(arr)  # own the memory
    return out
