"""A partition's claim, which every fenced write carries, and the two refusals of such a write."""

from __future__ import annotations

from dataclasses import dataclass

from worker.errors import SegmentWorkerError


class Fenced(SegmentWorkerError):
    """Raised when another worker claimed the partition after us: our write was refused and
    nothing was written. Carries the partition, our epoch and the current one."""

    def __init__(self, partition: int, epoch: int, current: int) -> None:
        super().__init__(f"partition {partition}: epoch {epoch} fenced by epoch {current}")
        self.partition, self.epoch, self.current = partition, epoch, current


class ServerChanged(SegmentWorkerError):
    """Raised when a write carries a claim made on another Redis server process than the one
    that answers: Redis restarted, was restored from a copy or failed over since the claim,
    and may have lost writes (even the epoch the claim holds may have been handed out
    again). Nothing was written; the partition must be claimed again, on this server."""

    def __init__(self, partition: int, current: str) -> None:
        super().__init__(f"partition {partition}: claimed on another Redis server than {current}")
        self.partition, self.current = partition, current


@dataclass(frozen=True, slots=True)
class Claim:
    """Ownership of one partition: the epoch our writes carry, the run id of the Redis server
    process that handed it out (writes are admitted there only: a connection that silently
    reconnects to a restarted or restored Redis must not write what was read from the old
    one), and the offsets (next offset to read, per input topic) up to which its input is
    already applied."""

    partition: int
    epoch: int
    offsets: dict[str, int]
    server: str
