"""The dead-letter record (dead_letter.v1): rejected input, why, and where it came from."""

from __future__ import annotations

import hashlib
from typing import Final, Literal

from worker.core.events import Rejection

RAW_LIMIT: Final = 4096
Stage = Literal["parse", "apply", "kafka"]


def dead_letter(
    rejection: Rejection, raw: bytes, source: dict[str, object], stage: Stage
) -> dict[str, object]:
    text = raw.decode("utf-8", errors="replace")
    return {
        "reason": rejection.reason.value,
        "field": rejection.field,
        "message": rejection.message,
        "stage": stage,
        "source": source,
        "raw": text[:RAW_LIMIT],
        "raw_sha256": hashlib.sha256(raw).hexdigest(),
        "truncated": len(text) > RAW_LIMIT,
    }
