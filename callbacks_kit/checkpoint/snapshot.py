"""HostSnapshot: a consistent host copy of the tensors to save, in buffers reused from save to save.

An asynchronous save may only hand tensors to its background thread once nothing can change
them: training goes on while the files are written. The loop therefore copies every tensor
into a host buffer first. Buffers are kept between saves (one extra host copy of the state,
the documented memory cost) so a save allocates nothing after the first; on a GPU they are
pinned, the copies are non-blocking and one event waits for all of them.

The tensors of one group (one safetensors file) are views into one flat buffer, laid out in
the order safetensors writes them (`codec.safetensors_order`), so the file's data is one
contiguous block: `codec.safetensors_parts` hands it over as one buffer, and the background
thread writes and hashes it in a few large calls that release the GIL instead of two per
tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from callbacks_kit.checkpoint.codec import safetensors_order

Layout = tuple[tuple[str, torch.Size, torch.dtype], ...]


@dataclass
class _Group:
    """The buffer of one group and its tensors' views, for one layout (keys, shapes, dtypes in file order)."""

    layout: Layout
    buffer: torch.Tensor
    views: dict[str, torch.Tensor]

    @classmethod
    def allocate(cls, layout: Layout, pin: bool) -> _Group:
        sizes = [torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size() for _, shape, dtype in layout]
        buffer = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=pin)
        views, offset = {}, 0
        for (key, shape, dtype), size in zip(layout, sizes, strict=True):
            # Element sizes never grow along safetensors' order, so every view is aligned for its dtype.
            views[key] = buffer[offset : offset + size].view(dtype).view(shape)
            offset += size
        return cls(layout, buffer, views)


class HostSnapshot:
    """Copies tensors to reusable host buffers; `ready()` returns once every copy is done."""

    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}
        self._used: set[str] = set()
        self._pending_cuda = False

    @property
    def nbytes(self) -> int:
        """Host memory held by the buffers."""
        return sum(group.buffer.numel() for group in self._groups.values())

    def copy(self, tensors: Mapping[str, torch.Tensor], group: str) -> dict[str, torch.Tensor]:
        """Host copies of `tensors`, contiguous views of one buffer per `group` (one file's tensors)."""
        order = safetensors_order(tensors)
        layout = tuple((key, tensors[key].shape, tensors[key].dtype) for key in order)
        held = self._groups.get(group)
        if held is None or held.layout != layout:
            pin = any(tensor.is_cuda for tensor in tensors.values())
            held = self._groups[group] = _Group.allocate(layout, pin=pin)
        pinned = held.buffer.is_pinned()  # copies from a GPU into it are queued, and `ready()` waits for them
        with torch.no_grad():  # copying from a parameter records nothing: no detach per tensor
            for key in order:
                held.views[key].copy_(tensors[key], non_blocking=pinned)
        self._pending_cuda |= pinned
        self._used.add(group)
        return {key: held.views[key] for key in tensors}

    def ready(self) -> None:
        """Wait for the queued device-to-host copies, and free the buffers this save did not use."""
        if self._pending_cuda:
            event = torch.cuda.Event()
            event.record()
            event.synchronize()
            self._pending_cuda = False
        for group in set(self._groups) - self._used:
            del self._groups[group]
        self._used.clear()
