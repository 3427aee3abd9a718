"""The error tree: every error we raise on purpose is a SegmentWorkerError (so a caller can tell
our refusals from bugs) and keeps the builtin base older callers catch."""

from __future__ import annotations

import pytest

from worker.core.conditions import ConditionError
from worker.core.packing import CorruptRecord
from worker.core.rules import RulesError
from worker.errors import SegmentWorkerError
from worker.redis.claims import Fenced
from worker.service import WorkerCrashed
from worker.settings import SettingsError

TREE: list[tuple[type[Exception], type[Exception]]] = [
    (SettingsError, ValueError),
    (CorruptRecord, ValueError),
    (RulesError, ValueError),
    (ConditionError, ValueError),
    (Fenced, SegmentWorkerError),
    (WorkerCrashed, RuntimeError),
]


@pytest.mark.parametrize(("error", "builtin"), TREE, ids=[e.__name__ for e, _ in TREE])
def test_every_error_is_ours_and_keeps_its_builtin_base(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, SegmentWorkerError)
    assert issubclass(error, builtin)
    assert (error.__doc__ or "").startswith("Raised when "), error.__doc__


def test_the_base_says_when_it_is_raised() -> None:
    assert (SegmentWorkerError.__doc__ or "").startswith("Raised when ")
