"""The bearer-token check that guards customer data on the HTTP port: right and wrong tokens,
and a compare whose time depends on neither the token nor its length (hmac.compare_digest
over equal-length digests, whatever the caller sends)."""

import hmac
from collections.abc import Callable

import pytest

from worker.http import authorised

TOKEN = "s3cret-token-of-some-length"


@pytest.fixture
def compares(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every call to hmac.compare_digest, by the check or anyone else, with its arguments."""
    calls: list[tuple[bytes, bytes]] = []
    real: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return calls


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),  # the scheme is case-insensitive (RFC 7235)
        (f"Bearer {TOKEN[:-1]}x", False),  # same length, last character differs
        (f"Bearer x{TOKEN[1:]}", False),  # same length, first character differs
        (f"Bearer {TOKEN[:-1]}", False),  # a prefix
        (f"Bearer {TOKEN}{TOKEN}", False),  # longer
        (f"Basic {TOKEN}", False),  # another scheme
        (TOKEN, False),  # no scheme
        ("Bearer ", False),
        (None, False),  # no header
    ],
)
def test_only_the_bearer_token_passes_and_every_check_compares_in_constant_time(
    compares: list[tuple[bytes, bytes]], header: str | None, expected: bool
) -> None:
    assert authorised(header, TOKEN) is expected
    (a, b), *more = compares
    assert not more
    assert len(a) == len(b) == 32  # digests: the compare's time says nothing of the length


def test_the_token_itself_is_never_compared_directly(
    compares: list[tuple[bytes, bytes]],
) -> None:
    authorised(f"Bearer {TOKEN[:5]}", TOKEN)
    assert all(TOKEN.encode() not in arg for pair in compares for arg in pair)
