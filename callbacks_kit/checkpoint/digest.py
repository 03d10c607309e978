"""The size and sha256 of a checkpoint file, and its parts hashed while they are written.

meta.json records both for every file; `restore` checks them before loading anything. A
file is given as bytes or as its parts in order (`Data`: a safetensors header and the
host buffers of its tensors, `codec.safetensors_parts`), never joined into one copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

Data = bytes | Sequence[bytes | memoryview]  # a file's bytes, or its parts in order
CHUNK = 16 << 20  # bytes per write and per hash call: few returns to Python, and a chunk stays in the CPU's L3


def digest(data: Data) -> dict[str, Any]:
    """`{"bytes": size, "sha256": hex digest}` of a file's bytes or parts."""
    sha, size = hashlib.sha256(), 0
    for part in [data] if isinstance(data, bytes) else data:
        sha.update(part)  # releases the GIL for large buffers
        size += memoryview(part).nbytes
    return {"bytes": size, "sha256": sha.hexdigest()}


class HashingParts:
    """A file's parts, cut into chunks that are hashed as they are written: iterate it once, in order.

    The writer (`store._write_file`) writes each chunk it gets; the chunk is hashed when the
    next one is asked for, while it is still in the CPU cache, so the bytes come from memory
    once for both. Writing and hashing a chunk each release the GIL, and every return takes
    it back from the training loop: a background save of 134 MB returns to Python about 20
    times, where 4 MiB chunks returned 70 times and writing and hashing tensor by tensor twice
    per tensor (over 600 times for ResNet-18 with AdamW). `digest()` is then the file's size and sha256.
    """

    def __init__(self, data: Data) -> None:
        self.parts = [data] if isinstance(data, bytes) else list(data)
        self._sha, self._size = hashlib.sha256(), 0

    def __iter__(self) -> Iterator[memoryview]:
        for part in self.parts:
            view = memoryview(part).cast("B")
            for start in range(0, len(view), CHUNK):
                chunk = view[start : start + CHUNK]
                yield chunk
                self._sha.update(chunk)
                self._size += len(chunk)

    def digest(self) -> dict[str, Any]:
        """Size and sha256 of the file; hashed now if its chunks did not go through exactly once."""
        if self._size != sum(memoryview(p).nbytes for p in self.parts):
            return digest(self.parts)
        return {"bytes": self._size, "sha256": self._sha.hexdigest()}
