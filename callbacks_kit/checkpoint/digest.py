"""The size and checksum of a checkpoint file, and its parts checksummed while they are written.

meta.json records both for every file; `restore` checks them before loading anything. A
file is given as bytes or as its parts in order (`Data`: a safetensors header and the
host buffers of its tensors, `codec.safetensors_parts`), never joined into one copy.

The checksum is CRC-32 (`zlib`): it catches the damage a checkpoint meets by accident (a
write cut short, a flipped byte, a file replaced by another) as sha256 did, at 7 GB/s in C
with the GIL released against sha256's 2 GB/s. That is 18 ms instead of 65 ms of the
background writer's CPU per ResNet-18 save with AdamW (134 MB), CPU the writer takes from
the training threads, and as much less at every verified read. Neither is a defence against
deliberate tampering, as a digest stored beside the file never was. Checkpoints of format
version 1 record sha256, which is still read.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

Data = bytes | Sequence[bytes | memoryview]  # a file's bytes, or its parts in order
CHUNK = 16 << 20  # bytes per write and per checksum call: few returns to Python, and a chunk stays in the CPU's L3
KIND = "crc32"  # the checksum meta.json records
KINDS = (KIND, "sha256")  # those a reader accepts: sha256 in format version 1


class Checksum:
    """A running checksum of one of `KINDS`, fed a file's bytes in order."""

    def __init__(self, kind: str = KIND) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown checksum {kind!r}; one of {KINDS}")
        self._crc = 0
        self._sha = hashlib.sha256() if kind == "sha256" else None

    def update(self, data: bytes | memoryview) -> None:
        """Add the next bytes; both kinds release the GIL for large buffers."""
        if self._sha is not None:
            self._sha.update(data)
        else:
            self._crc = zlib.crc32(data, self._crc)

    def hexdigest(self) -> str:
        """The checksum as meta.json writes it: lowercase hex (8 digits for CRC-32)."""
        return self._sha.hexdigest() if self._sha is not None else f"{self._crc:08x}"


def digest(data: Data) -> dict[str, Any]:
    """`{"bytes": size, "crc32": hex}` of a file's bytes or parts."""
    checksum, size = Checksum(), 0
    for part in [data] if isinstance(data, bytes) else data:
        checksum.update(part)
        size += memoryview(part).nbytes
    return {"bytes": size, KIND: checksum.hexdigest()}


def checksum_matches(expected: Mapping[str, Any], chunks: Iterable[bytes | memoryview]) -> bool:
    """Whether a file's bytes (`chunks`, in order) have the checksum meta.json records in `expected`.

    False when `expected` holds none of `KINDS` (a damaged meta.json entry).
    """
    kind = next((k for k in KINDS if k in expected), None)
    if kind is None:
        return False
    checksum = Checksum(kind)
    for chunk in chunks:
        checksum.update(chunk)
    return checksum.hexdigest() == expected[kind]


class HashingParts:
    """A file's parts, cut into chunks that are checksummed as they are written: iterate it once, in order.

    The writer (`store._write_file`) writes each chunk it gets; the chunk is checksummed when
    the next one is asked for, while it is still in the CPU cache, so the bytes come from
    memory once for both. Writing and checksumming a chunk each release the GIL, and every
    return takes it back from the training loop: a background save of 134 MB returns to
    Python about 20 times, where 4 MiB chunks returned 70 times and writing and hashing tensor
    by tensor twice per tensor (over 600 times for ResNet-18 with AdamW). `digest()` is then
    the file's size and checksum.
    """

    def __init__(self, data: Data) -> None:
        self.parts = [data] if isinstance(data, bytes) else list(data)
        self._checksum, self._size = Checksum(), 0

    def __iter__(self) -> Iterator[memoryview]:
        for part in self.parts:
            view = memoryview(part).cast("B")
            for start in range(0, len(view), CHUNK):
                chunk = view[start : start + CHUNK]
                yield chunk
                self._checksum.update(chunk)
                self._size += len(chunk)

    def digest(self) -> dict[str, Any]:
        """Size and checksum of the file; computed now if its chunks did not go through exactly once."""
        if self._size != sum(memoryview(p).nbytes for p in self.parts):
            return digest(self.parts)
        return {"bytes": self._size, KIND: self._checksum.hexdigest()}
