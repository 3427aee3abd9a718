"""How Redis names a customer: by id, or under a pseudonym key by its HMAC, so that the id
stays out of key names (SCAN, KEYS, keyspace events, key listings of backups). What that does
not hide (the state value, outbox records, a commit's arguments): docs/security.md."""

from __future__ import annotations

import hashlib
import hmac
import struct
from functools import lru_cache
from typing import Final

_ID_LEN: Final = struct.Struct(">I")


@lru_cache(maxsize=1 << 16)
def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Pseudonyms:
    """Names, erasure markers and stored values under one pseudonym key (or none)."""

    def __init__(self, key: bytes | None) -> None:
        self.key = key or None
        # Every read and commit names its customers: a digest costs ~1 us, customers recur.
        self._hmac_cached = lru_cache(maxsize=1 << 16)(self._hmac)

    def name(self, customer_id: str) -> str:
        """The customer in keys and due-index members: the id, or its HMAC-SHA256 (hex)."""
        if self.key is None:
            return customer_id
        return self._hmac_cached(customer_id)

    def _hmac(self, customer_id: str) -> str:
        assert self.key is not None  # only called with one
        return hmac.new(self.key, customer_id.encode(), hashlib.sha256).hexdigest()

    def marker(self, customer_id: str) -> str:
        """The erasure marker's digest: the pseudonym, or without a pseudonym key SHA-256 of
        the id, so that an erasure never leaves the id in a key name. (Unkeyed, it hides the id
        only from someone who cannot guess it and hash the guess.)"""
        if self.key is not None:
            return self.name(customer_id)
        return _sha256_hex(customer_id)

    def wrap(self, customer_id: str, blob: bytes) -> bytes:
        """Under a pseudonym the value carries the id (sweeps must emit it): length-prefixed."""
        if self.key is None:
            return blob
        raw = customer_id.encode()
        return _ID_LEN.pack(len(raw)) + raw + blob

    def unwrap(self, stored: bytes) -> tuple[str | None, bytes]:
        """(the customer id if the value carries it, the state blob)."""
        if self.key is None:
            return None, stored
        (n,) = _ID_LEN.unpack_from(stored)
        end = _ID_LEN.size + n
        return stored[_ID_LEN.size : end].decode(), stored[end:]
