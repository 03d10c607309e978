"""HostSnapshot: a consistent host copy of the tensors to save, in buffers reused from save to save.

An asynchronous save may only hand tensors to its background thread once nothing can change
them: training goes on while the files are written. The loop therefore copies every tensor
into a host buffer first. Buffers are kept between saves (one extra host copy of the state,
the documented memory cost) so a save allocates nothing after the first; on a GPU they are
pinned, the copies are non-blocking and one event waits for all of them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


class HostSnapshot:
    """Copies tensors to reusable host buffers; `ready()` returns once every copy is done."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self._used: set[str] = set()
        self._pending_cuda = False

    @property
    def nbytes(self) -> int:
        """Host memory held by the buffers."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def copy(self, tensors: Mapping[str, torch.Tensor], group: str) -> dict[str, torch.Tensor]:
        """Host copies of `tensors` (contiguous, never sharing storage); `group` keeps key spaces apart."""
        copies = {}
        for key, tensor in tensors.items():
            tensor = tensor.detach()
            slot = f"{group}/{key}"
            buffer = self._buffers.get(slot)
            if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
                pin = tensor.device.type == "cuda"
                buffer = self._buffers[slot] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=pin)
            on_cuda = tensor.device.type == "cuda"
            buffer.copy_(tensor, non_blocking=on_cuda)
            self._pending_cuda |= on_cuda
            self._used.add(slot)
            copies[key] = buffer
        return copies

    def ready(self) -> None:
        """Wait for the queued device-to-host copies, and free the buffers this save did not use."""
        if self._pending_cuda:
            event = torch.cuda.Event()
            event.record()
            event.synchronize()
            self._pending_cuda = False
        for slot in set(self._buffers) - self._used:
            del self._buffers[slot]
        self._used.clear()
