"""Training state as JSON + safetensors (never pickle), the RNG states of a process, and tagged JSON for LR schedules.

`split_tensors` turns a nested state (an optimizer's `state_dict()`, a scaler's, a callback's)
into a JSON-able tree whose tensors are replaced by references into a flat `{key: tensor}`
dict that safetensors can store; `join_tensors` undoes it. Tuples and non-string dict keys
(the optimizer's integer parameter ids) survive the round trip.
"""

from __future__ import annotations

import base64
import json
import math
import numbers
import random
import struct
import warnings
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch

from callbacks_kit.errors import StateFormatError

_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"
_MARKERS = (_TENSOR, _TUPLE, _ITEMS)
_LEAVES = (str, bool, int, float, type(None))  # kept as they are, found without the ABC checks below


def split_tensors(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """A JSON-able copy of `obj`; its tensors are moved into `tensors` under dotted keys.

    Raises:
        StateFormatError: `obj` holds something else (an arbitrary object, a function...).
    """
    if type(obj) in _LEAVES:  # most of a state; `isinstance(obj, Mapping)` costs a few µs per value
        return obj
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach()  # made host-ready by `host_tensors` when serialised
        return {_TENSOR: prefix}
    if isinstance(obj, (dict, Mapping)):
        if all(isinstance(k, str) and k not in _MARKERS for k in obj):
            return {k: split_tensors(v, tensors, f"{prefix}.{k}") for k, v in obj.items()}
        return {
            _ITEMS: [
                [split_tensors(k, tensors, f"{prefix}.key{i}"), split_tensors(v, tensors, f"{prefix}.{i}")]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if isinstance(obj, tuple):
        return {_TUPLE: [split_tensors(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [split_tensors(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    raise StateFormatError(
        f"{prefix} is a {type(obj).__name__}; checkpoint state must be JSON values (dict, list, str, "
        "number, bool, None), tuples or tensors"
    )


def host_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors for safetensors, copied only when needed.

    Tensors on an accelerator are copied to the host; a CPU tensor is copied only if it is
    not contiguous or shares its storage with one already kept (tied weights), which
    safetensors refuses. A CPU tensor may thus be the live one: for a synchronous save only
    (an asynchronous one copies through `checkpoint.snapshot.HostSnapshot`).
    """
    kept: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for key, tensor in tensors.items():
        host = tensor.detach().to("cpu").contiguous()
        pointer = host.untyped_storage().data_ptr()
        if pointer in storages:
            host = host.clone()
        storages.add(host.untyped_storage().data_ptr())
        kept[key] = host
    return kept


# safetensors' names of the dtypes a checkpoint can hold, in the order of its format's dtype
# enum: a file lists the tensors from the last of these to the first, then by name.
_SAFETENSORS_DTYPES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fn: "F8_E4M3", torch.int16: "I16", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int32: "I32", torch.float32: "F32", torch.float64: "F64", torch.int64: "I64",
}  # fmt: skip
_DTYPE_RANK = {dtype: rank for rank, dtype in enumerate(_SAFETENSORS_DTYPES)}


def safetensors_order(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys in the order a safetensors file holds their data: by dtype (that list, from its end), then by name.

    Unknown dtypes (which `safetensors_parts` leaves to the library) go last, by name.
    """
    return sorted(tensors, key=lambda k: (-_DTYPE_RANK.get(tensors[k].dtype, -1), k))


def safetensors_parts(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> list[bytes | memoryview]:
    """The bytes of a safetensors file as a header and the tensors' buffers, without copying the tensors.

    `safetensors.torch.save` returns the same bytes but builds them holding the GIL (about
    0.4 s for 130 MB here), which would stall the training loop while a background thread
    saves; writing and hashing these buffers releases it. Tensors that follow each other in
    one storage, in file order (a `HostSnapshot`'s), are one buffer. Tensors must be
    contiguous CPU tensors that nothing changes until the file is written (a snapshot). The
    order and the header are safetensors' own: the file is byte-identical to
    `safetensors.torch.save`'s but for the order of the metadata entries (a hash map's there).
    """
    if any(t.dtype not in _SAFETENSORS_DTYPES for t in tensors.values()):
        import safetensors.torch

        return [safetensors.torch.save(dict(tensors), metadata=dict(metadata) if metadata else None)]
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    runs: list[tuple[torch.UntypedStorage, int, int]] = []  # storage, first byte, end: data written as one buffer
    offset = 0
    for key in safetensors_order(tensors):
        tensor = tensors[key]
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
        if not size:
            continue
        storage, start = tensor.untyped_storage(), int(tensor.storage_offset()) * tensor.element_size()
        if runs and runs[-1][0].data_ptr() == storage.data_ptr() and runs[-1][2] == start:
            runs[-1] = (storage, runs[-1][1], start + size)
        else:
            runs.append((storage, start, start + size))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % 8)
    buffers: list[bytes | memoryview] = [struct.pack("<Q", len(text)) + text]
    for storage, start, end in runs:  # NumPy's memoryview of the storage's bytes: no copy
        buffers.append(torch.empty(0, dtype=torch.uint8).set_(storage).numpy().data[start:end])
    return buffers


def join_tensors(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Rebuild what `split_tensors` took apart."""
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if _TENSOR in obj:
        return tensors[obj[_TENSOR]]
    if _TUPLE in obj:
        return tuple(join_tensors(v, tensors) for v in obj[_TUPLE])
    if _ITEMS in obj:
        return {join_tensors(k, tensors): join_tensors(v, tensors) for k, v in obj[_ITEMS]}
    return {k: join_tensors(v, tensors) for k, v in obj.items()}


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def capture_rng_states() -> dict[str, Any]:
    """The global RNG states of this process (Python, NumPy, torch CPU and its own CUDA device) as JSON.

    Only the CUDA device this process trains on (`torch.cuda.current_device()`, which
    Accelerate sets to the local rank's) is saved, under `cuda_device`: the other visible
    devices belong to other processes. Checkpoints before this saved every visible device
    under `cuda`; that key stays, empty, so older readers see no CUDA state.
    """
    version, internal, gauss = random.getstate()
    # A dict only when the global generator is not the MT19937 that NumPy starts with and this code expects.
    legacy = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state(legacy=True))
    kind, keys, pos, has_gauss, cached = legacy
    states: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        device = torch.cuda.current_device()
        states["cuda_device"] = {"index": device, "state": _b64(torch.cuda.get_rng_state(device))}
    return states


def apply_rng_states(states: Mapping[str, Any]) -> None:
    """Set this process's global RNG states from `capture_rng_states()`.

    The saved CUDA state goes to this process's own device. When it cannot be restored (no
    CUDA here, or an old checkpoint that saved fewer devices than this process's index) a
    `RuntimeWarning` says so: the CUDA random streams (dropout on the GPU) then differ from
    an uninterrupted run's.
    """
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(states["torch"]))
    own = states.get("cuda_device")
    every = states.get("cuda") or []  # written by 0.1.0: every visible device's state
    if not own and not every:
        return
    if not torch.cuda.is_available():
        warnings.warn(
            "the checkpoint holds a CUDA RNG state but CUDA is not available here: it is not restored, so "
            "random draws on a GPU would not repeat the saved run's",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    device = torch.cuda.current_device()
    if own:
        torch.cuda.set_rng_state(_unb64(own["state"]), device)
    elif device < len(every):
        torch.cuda.set_rng_state(_unb64(every[device]), device)
    else:
        warnings.warn(
            f"the checkpoint holds the CUDA RNG states of {len(every)} device(s), none for this process's "
            f"cuda:{device}: its CUDA random draws (dropout on the GPU) will differ from the saved run's",
            RuntimeWarning,
            stacklevel=2,
        )


# ------------------------------------------------------------------------------ tagged JSON (LR schedules)
_SKIPPED = "__not_json__"


def tag_json(value: Any) -> Any:
    """A JSON-safe copy of an LR scheduler's state: non-finite floats, tuples and tensors are tagged.

    `LearningRateScheduler` stores its state this way (small values, inside state.json) while
    `split_tensors` moves bulk tensors to safetensors. The two encodings are separate and
    both are part of checkpoint format 1; their markers never meet, because `split_tensors`
    wraps any dict holding a marker-named key in an `__items__` list.

    Values JSON cannot hold (functions, arbitrary objects) are replaced by a marker and
    left as the scheduler built them when loading; PyTorch already drops LambdaLR's
    functions the same way.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.detach().cpu().tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, tuple):
        return {"__tuple__": [tag_json(v) for v in value]}
    if isinstance(value, list):
        return [tag_json(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: tag_json(v) for k, v in value.items()}
    if isinstance(value, dict):
        return {"__items__": [[tag_json(k), tag_json(v)] for k, v in value.items()]}
    return {_SKIPPED: type(value).__name__}


def untag_json(value: Any) -> Any:
    """Undo `tag_json`; dict entries that could not be saved are left out."""
    if isinstance(value, list):
        return [None if _skipped(v) else untag_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__float__" in value:
        return float(value["__float__"])
    if "__tensor__" in value:
        return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]))
    if "__tuple__" in value:
        return tuple(untag_json(value["__tuple__"]))
    if "__items__" in value:
        return {untag_json(k): untag_json(v) for k, v in value["__items__"]}
    return {k: untag_json(v) for k, v in value.items() if not _skipped(v)}


def _skipped(value: Any) -> bool:
    return isinstance(value, dict) and _SKIPPED in value
