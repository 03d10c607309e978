"""Training state as JSON + safetensors (never pickle), and the RNG states of a process.

`split_tensors` turns a nested state (an optimizer's `state_dict()`, a scaler's, a callback's)
into a JSON-able tree whose tensors are replaced by references into a flat `{key: tensor}`
dict that safetensors can store; `join_tensors` undoes it. Tuples and non-string dict keys
(the optimizer's integer parameter ids) survive the round trip.
"""

from __future__ import annotations

import base64
import numbers
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"
_MARKERS = (_TENSOR, _TUPLE, _ITEMS)


class StateFormatError(ValueError):
    """A value in a state dict is neither JSON-able nor a tensor."""


def split_tensors(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """A JSON-able copy of `obj`; its tensors are moved into `tensors` under dotted keys.

    Raises:
        StateFormatError: `obj` holds something else (an arbitrary object, a function...).
    """
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach()  # made host-ready by `host_tensors` when serialised
        return {_TENSOR: prefix}
    if isinstance(obj, Mapping):
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
    safetensors refuses. The save is synchronous, so no snapshot is needed.
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
    """The global RNG states of this process (Python, NumPy, torch CPU and CUDA) as JSON."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    states: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return states


def apply_rng_states(states: Mapping[str, Any]) -> None:
    """Set this process's global RNG states from `capture_rng_states()`."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(states["torch"]))
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in cuda])
