"""What runs on the timer tick rather than on input: the sweep of due time-driven changes,
population gauges, rules-file reloads and the rate-limited re-evaluation they start."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Final

from worker.clock import Clock
from worker.core.batch import Outcome, Topics, reevaluate_batch
from worker.core.batch import sweep as sweep_due
from worker.core.packing import CorruptRecord
from worker.core.rules import Rules, RulesError, load_rules
from worker.live.ownership import Ownership
from worker.live.partitions import Partitions
from worker.live.relay import Relay, observe_emits
from worker.live.retry import Health
from worker.live.storage import Storage
from worker.metrics import Metrics
from worker.redis.claims import Claim
from worker.settings import Settings

log = logging.getLogger("segment_worker")


# A changed rules file is read once it has stayed as it is this long: an editor or `cat >`
# writing it in place must not have a half-written file loaded (which a reload would apply).
SETTLE_S: Final = 1.0

Signature = tuple[int, int, int] | None
"""What tells a rules file changed: modification time, size and inode (a file renamed into
place is a new inode even within the same second); None: no file."""


def _signature(path: Path | None) -> Signature:
    try:
        if path is None:
            return None
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class Timers:
    """Holds the rules in force; every SEGMENT_WORKER_TIMER_INTERVAL_MS, sweeps and
    re-evaluates the owned partitions."""

    def __init__(
        self,
        settings: Settings,
        rules: Rules,
        *,
        storage: Storage,
        relay: Relay,
        ownership: Ownership,
        partitions: Partitions,
        health: Health,
        metrics: Metrics,
        clock: Clock,
        topics: Topics,
    ) -> None:
        self.settings, self.rules = settings, rules
        self.storage, self.relay, self.ownership = storage, relay, ownership
        self.partitions, self.health = partitions, health
        self.metrics, self.clock, self.topics = metrics, clock, topics
        self._next_tick = 0.0
        self._reload_requested = False
        self._rules_seen = _signature(settings.rules)  # the file as last acted on
        self._changed: tuple[Signature, float] | None = None  # a change, and since when
        metrics.rules_info.labels(rules.version).set(1)

    def due(self) -> bool:
        """Whether the tick is due; if so, the next one is scheduled."""
        if time.monotonic() < self._next_tick:
            return False
        self._next_tick = time.monotonic() + self.settings.timer_interval_ms / 1000
        return True

    async def tick(self) -> None:
        """Reload the rules if the file changed, sweep, then re-evaluate a share."""
        await self._check_rules_file()
        await self.health.retry("sweep", self.sweep)
        await self.health.retry("reevaluate", self.reevaluate_step)

    def request_reload(self) -> None:
        """SIGHUP: re-read the rules file at the next timer tick."""
        self._reload_requested = True

    async def _check_rules_file(self) -> None:
        path = self.settings.rules
        seen = _signature(path)
        if not self._reload_requested:
            if seen == self._rules_seen:
                self._changed = None
                return
            now = time.monotonic()
            if self._changed is None or self._changed[0] != seen:
                self._changed = (seen, now)  # still being written, perhaps: wait
                return
            if now - self._changed[1] < SETTLE_S:
                return
        self._reload_requested, self._rules_seen, self._changed = False, seen, None
        if path is None:
            return
        try:  # off the event loop: a large file must not hold up batches and heartbeats
            rules = await asyncio.to_thread(load_rules, path)
        except RulesError as exc:
            self.metrics.rules_reloads.labels("rejected").inc()
            log.error("rules reload refused, the current rules keep running: %s", exc)
            return
        if rules.version == self.rules.version:
            return
        log.info("rules %s -> %s: re-evaluating every customer", self.rules.version, rules.version)
        self.metrics.rules_reloads.labels("applied").inc()
        self.metrics.rules_info.clear()
        self.metrics.rules_info.labels(rules.version).set(1)
        self.rules = rules
        for state in self.partitions:
            state.reevaluate_from = None if state.claim is None else 0
        self.metrics.reevaluation_pending.set(len(self.partitions.reevaluating()))
        for state in self.partitions:
            # Before the sweep or a batch classifies anyone under them: should the pass not
            # finish, the next take re-evaluates under whatever rules are then in force.
            if state.claim is not None:
                begin = partial(self.storage.begin_rules, state.claim, rules.version)
                await self.health.retry("rules", begin)

    async def reevaluate_step(self) -> None:
        """Re-classify customers under new rules at a bounded rate (a share of
        SEGMENT_WORKER_RULES_REEVALUATION_RATE per timer tick), partition by partition."""
        await self.storage.guard()
        store = self.storage.store
        budget = max(
            1, int(self.settings.rules_reevaluation_rate * self.settings.timer_interval_ms / 1000)
        )
        now = self.clock.now_ms()
        for state in self.partitions:
            start, claim = state.reevaluate_from, state.claim
            if start is None:
                continue
            if claim is None:
                state.reevaluate_from = None
                continue
            if state.recovering is not None:
                continue
            cursor = start
            while budget > 0:
                cursor, ids = await self.health.timed(
                    "scan", store.scan_customers(state.partition, cursor, min(budget, 1000))
                )
                budget -= max(1, len(ids))
                try:
                    states = await self.storage.load(state.partition, ids)
                except CorruptRecord as exc:
                    self.ownership.stop(state.partition, exc)
                    break
                outcome = reevaluate_batch(states, self.rules, self.topics, now)
                self.relay.stamp(outcome, claim)
                if outcome.states and await self.storage.commit(claim, outcome):
                    self._relay_later(claim, outcome)
                self.metrics.reevaluated.inc(len(outcome.states))
                if cursor == 0:
                    await self.storage.mark_rules(claim, self.rules.version)
                    state.reevaluate_from = None
                    break
                state.reevaluate_from = cursor
            if budget <= 0:
                break
        self.metrics.reevaluation_pending.set(len(self.partitions.reevaluating()))

    def _relay_later(self, claim: Claim, outcome: Outcome) -> None:
        """Relay a committed outcome without holding up the loop (and the input batches
        behind it) while the broker acknowledges: like a batch's, the partition's next
        commit waits for this relay (Storage.commit), so the outbox goes out in order."""
        state = self.partitions.get(claim.partition)
        if state is None:
            return  # revoked meanwhile: the next owner relays from the outbox

        async def relay() -> None:
            await self.health.retry("relay", partial(self.relay.relay, claim, outcome.out))
            observe_emits(self.metrics, outcome, [])

        state.relaying = asyncio.create_task(relay())

    async def sweep(self) -> None:
        """Fire the time-driven changes that fell due in every owned partition, then update
        the population gauges."""
        await self.storage.guard()
        store = self.storage.store
        now = self.clock.now_ms()
        backlog = 0
        for partition, claim in self.partitions.running().items():
            state = self.partitions.get(partition)
            if state is not None and state.recovering is not None:
                continue  # classify the re-read customers once, after the re-read
            due = await self.health.timed(
                "due", store.due(partition, now, self.settings.timer_batch)
            )
            backlog += len(due)
            if not due:
                continue
            try:
                states = await self.storage.load(partition, list(due))
            except CorruptRecord as exc:
                self.ownership.stop(partition, exc)
                continue
            for customer in states.values():
                if customer is not None and customer.due_day is not None:
                    due_ms = self.rules.calendar.start_ms(customer.due_day)
                    self.metrics.timer_delay.observe(max(0, now - due_ms) / 1000)
            outcome = sweep_due(states, self.rules, self.topics, now)
            self.relay.stamp(outcome, claim)
            if not await self.storage.commit(claim, outcome, found=due):
                continue
            self._relay_later(claim, outcome)
            self.metrics.timers.inc(outcome.timers)
        self.metrics.timer_backlog.set(backlog)
        totals: dict[tuple[str, str], int] = defaultdict(int)
        for partition in self.partitions.owned():
            counts = await self.health.timed("populations", store.populations(partition))
            for key, count in counts.items():
                totals[key] += count
        self.metrics.population.clear()
        for (dimension, class_name), count in totals.items():
            self.metrics.population.labels(dimension, class_name).set(count)
