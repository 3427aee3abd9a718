"""The outbox record: a message the live worker committed to Redis with its batch, waiting
for the relay to send it. Records carry arbitrary bytes (a dead-lettered payload may not even
be UTF-8), so they are stored in a length-prefixed binary frame, not JSON."""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from worker.core.packing import CorruptRecord

_LEN: Final = struct.Struct(">I")


class OutRecord(NamedTuple):  # immutable and cheap to build: one per output record
    """A message waiting in the outbox for the relay: where it goes and its exact bytes."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def encode(self) -> bytes:
        parts = [self.topic.encode(), self.key, self.value]
        for name, value in self.headers:
            parts += [name.encode(), value]
        out = bytearray(_LEN.pack(len(parts)))
        for part in parts:
            if part is None:
                out += b"\xff\xff\xff\xff"
            else:
                out += _LEN.pack(len(part)) + part
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> OutRecord:
        try:
            (count,) = _LEN.unpack_from(data, 0)
            pos, parts = 4, list[bytes | None]()
            for _ in range(count):
                (size,) = _LEN.unpack_from(data, pos)
                pos += 4
                if size == 0xFFFFFFFF:
                    parts.append(None)
                    continue
                if pos + size > len(data):
                    raise CorruptRecord("outbox record shorter than its frame")
                parts.append(data[pos : pos + size])
                pos += size
            if pos != len(data) or count < 3 or count % 2 != 1 or parts[0] is None:
                raise CorruptRecord("outbox record frame does not add up")
            names, values = parts[3::2], parts[4::2]
            headers = tuple(
                ((n or b"").decode(), v or b"") for n, v in zip(names, values, strict=True)
            )
            return cls(parts[0].decode(), parts[1], parts[2], headers)
        except (struct.error, UnicodeDecodeError) as exc:
            raise CorruptRecord(f"unreadable outbox record: {exc}") from None
