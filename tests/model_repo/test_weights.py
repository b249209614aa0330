"""The legacy checkpoint reader: the shipped EfficientNet-Lite0 file, hand-made files, hostile pickles."""

from __future__ import annotations

import io
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from batchserve.model_repo.weights import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    RestrictedUnpickler,
    UnsafePickleError,
    WeightsFormatError,
    efficientnet_lite0_weights_path,
    load_legacy_torch_state_dict,
)

# --- a minimal writer of the legacy format, opcode by opcode (protocol 2), so tests need no torch ---


def _str(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


_ORDERED_DICT = _global("collections", "OrderedDict") + b")R"


@dataclass
class FakeTensor:
    storage_key: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _state_dict_pickle(tensors: dict[str, FakeTensor], storages: dict[str, np.ndarray]) -> bytes:
    out = b"\x80\x02" + _ORDERED_DICT + b"("
    for name, t in tensors.items():
        storage = storages[t.storage_key]
        storage_cls = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}[storage.dtype]
        pid = _tuple(
            [_str("storage"), _global("torch", storage_cls), _str(t.storage_key), _str("cpu"), _int(storage.size), b"N"]
        )
        args = _tuple(
            [
                pid + b"Q",
                _int(t.offset),
                _tuple([_int(n) for n in t.size]),
                _tuple([_int(s) for s in t.stride]),
                b"\x89",
                _ORDERED_DICT,
            ]
        )
        out += _str(name) + _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"
    return out + b"u."


def legacy_checkpoint(
    tensors: dict[str, FakeTensor], storages: dict[str, np.ndarray], state_pickle: bytes | None = None
) -> bytes:
    keys = sorted(storages)
    sys_info = {
        "protocol_version": LEGACY_PROTOCOL,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    out = (
        pickle.dumps(LEGACY_MAGIC, protocol=2)
        + pickle.dumps(LEGACY_PROTOCOL, protocol=2)
        + pickle.dumps(sys_info, protocol=2)
    )
    out += state_pickle if state_pickle is not None else _state_dict_pickle(tensors, storages)
    out += pickle.dumps(keys, protocol=2)
    for key in keys:
        data = storages[key]
        out += struct.pack("<q", data.size) + data.astype(data.dtype.newbyteorder("<")).tobytes()
    return out


def _write(tmp_path: Path, data: bytes, name: str = "w.pth") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- the shipped checkpoint ---


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, np.ndarray]:
    return load_legacy_torch_state_dict(efficientnet_lite0_weights_path())


def test_shipped_checkpoint_has_all_entries_with_known_shapes(lite0_state: dict[str, np.ndarray]) -> None:
    assert len(lite0_state) == 296
    assert lite0_state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert lite0_state["_fc.weight"].shape == (1000, 1280)
    assert lite0_state["_fc.bias"].shape == (1000,)
    assert lite0_state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert lite0_state["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert lite0_state["_blocks.0._project_conv.weight"].shape == (16, 32, 1, 1)
    assert "_blocks.0._expand_conv.weight" not in lite0_state  # expand ratio 1: no expansion conv


def test_shipped_checkpoint_dtypes_and_values(lite0_state: dict[str, np.ndarray]) -> None:
    counters = lite0_state["_bn0.num_batches_tracked"]
    assert counters.dtype == np.int64 and counters.shape == ()
    floats = {k: v for k, v in lite0_state.items() if not k.endswith("num_batches_tracked")}
    assert all(v.dtype == np.float32 and v.flags.c_contiguous and v.flags.writeable for v in floats.values())
    assert all(np.isfinite(v).all() for v in floats.values())
    # Dead channels (always-zero activations) have variance exactly 0; none is negative.
    assert all((lite0_state[k] >= 0).all() for k in lite0_state if k.endswith("running_var"))


def test_stem_weight_stored_with_permuted_strides_is_read_in_logical_order(tmp_path: Path) -> None:
    # The shipped stem weight has strides (1, 32, 288, 96): element [o,i,h,w] sits at o + 32i + 288h + 96w.
    # Rebuild the same layout by hand and check each index lands where that formula says.
    storage = np.arange(864, dtype=np.float32)
    data = legacy_checkpoint({"w": FakeTensor("s", 0, (32, 3, 3, 3), (1, 32, 288, 96))}, {"s": storage})
    w = load_legacy_torch_state_dict(_write(tmp_path, data))["w"]
    o, i, h, x = np.indices((32, 3, 3, 3))
    np.testing.assert_array_equal(w, (o + 32 * i + 288 * h + 96 * x).astype(np.float32))


# --- hand-made checkpoints ---


def test_views_offsets_and_shared_storage(tmp_path: Path) -> None:
    base = np.arange(12, dtype=np.float32)
    tensors = {
        "matrix": FakeTensor("a", 0, (3, 4), (4, 1)),
        "transposed": FakeTensor("a", 0, (4, 3), (1, 4)),
        "window": FakeTensor("a", 5, (2, 2), (4, 1)),
        "broadcast": FakeTensor("a", 7, (2, 3), (0, 1)),
        "scalar": FakeTensor("b", 1, (), ()),
        "empty": FakeTensor("a", 0, (0, 5), (5, 1)),
    }
    storages = {"a": base, "b": np.array([10, 20], dtype=np.int64)}
    state = load_legacy_torch_state_dict(_write(tmp_path, legacy_checkpoint(tensors, storages)))
    assert list(state) == list(tensors)  # file order kept
    np.testing.assert_array_equal(state["matrix"], base.reshape(3, 4))
    np.testing.assert_array_equal(state["transposed"], base.reshape(3, 4).T)
    np.testing.assert_array_equal(state["window"], [[5, 6], [9, 10]])
    np.testing.assert_array_equal(state["broadcast"], [[7, 8, 9], [7, 8, 9]])
    assert state["scalar"].shape == () and state["scalar"] == 20 and state["scalar"].dtype == np.int64
    assert state["empty"].shape == (0, 5)
    state["matrix"][0, 0] = 99  # owned copies: writing one does not change another
    assert state["transposed"][0, 0] == 0


def test_view_past_the_end_of_its_storage_is_rejected(tmp_path: Path) -> None:
    data = legacy_checkpoint({"w": FakeTensor("a", 4, (3, 4), (4, 1))}, {"a": np.zeros(12, np.float32)})
    with pytest.raises(WeightsFormatError, match="reaches element"):
        load_legacy_torch_state_dict(_write(tmp_path, data))


def test_malformed_tensor_arguments_are_rejected(tmp_path: Path) -> None:
    bad_args = _tuple([_int(0), _str("not a size"), _tuple([_int(1)]), b"\x89", _ORDERED_DICT])
    pid = _tuple([_str("storage"), _global("torch", "FloatStorage"), _str("a"), _str("cpu"), _int(4), b"N"])
    bad_args = bad_args[:1] + pid + b"Q" + bad_args[1:]
    state = b"\x80\x02" + _ORDERED_DICT + b"(" + _str("w") + _global("torch._utils", "_rebuild_tensor_v2") + bad_args
    data = legacy_checkpoint({}, {"a": np.zeros(4, np.float32)}, state_pickle=state + b"Ru.")
    with pytest.raises(WeightsFormatError, match="malformed"):
        load_legacy_torch_state_dict(_write(tmp_path, data))


@pytest.mark.parametrize("cut", [10, 200, -20, -1])
def test_truncated_file_is_rejected(tmp_path: Path, cut: int) -> None:
    data = legacy_checkpoint({"w": FakeTensor("a", 0, (8,), (1,))}, {"a": np.ones(8, np.float32)})
    with pytest.raises(WeightsFormatError):
        load_legacy_torch_state_dict(_write(tmp_path, data[:cut]))


def test_other_formats_are_rejected_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(WeightsFormatError, match="zip-format"):
        load_legacy_torch_state_dict(_write(tmp_path, b"PK\x03\x04" + bytes(100)))
    with pytest.raises(WeightsFormatError, match="magic"):
        load_legacy_torch_state_dict(_write(tmp_path, pickle.dumps(12345, protocol=2) + bytes(10)))
    with pytest.raises(WeightsFormatError):
        load_legacy_torch_state_dict(_write(tmp_path, b""))


# --- hostile pickles ---


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_unpickler_refuses_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_RunsShell(marker), protocol=2)
    with pytest.raises(UnsafePickleError, match="system"):
        RestrictedUnpickler(io.BytesIO(payload)).load()
    assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [("builtins", "eval"), ("torch", "load"), ("torch._utils", "_rebuild_parameter"), ("numpy", "load")],
)
def test_unpickler_refuses_any_other_global(module: str, name: str) -> None:
    payload = b"\x80\x02" + _global(module, name) + b"."
    with pytest.raises(UnsafePickleError, match=name):
        RestrictedUnpickler(io.BytesIO(payload)).load()


def test_checkpoint_with_hostile_state_dict_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"w": _RunsShell(marker)}, protocol=2)
    data = legacy_checkpoint({}, {}, state_pickle=evil)
    with pytest.raises(UnsafePickleError):
        load_legacy_torch_state_dict(_write(tmp_path, data))
    assert not marker.exists()
