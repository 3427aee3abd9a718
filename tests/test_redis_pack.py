"""The coalescer packs function calls itself: byte for byte what redis-py would send."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from worker.redis.coalescer import pack

argument = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=40),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
command = st.tuples(st.sampled_from(["FCALL", "FCALL_RO", b"FCALL"])).flatmap(
    lambda name: st.lists(argument, max_size=12).map(lambda rest: (*name, *rest))
)


@given(st.lists(command, min_size=1, max_size=5))
def test_packed_as_redis_py_packs_them(commands: list[tuple[str | bytes | int, ...]]) -> None:
    connection = Connection()  # not connected: only its packer and encoder are used
    assert pack(commands, connection.encoder) == b"".join(connection.pack_commands(commands))


def test_what_redis_cannot_take_is_refused_as_redis_py_refuses_it() -> None:
    connection = Connection()
    with pytest.raises(DataError):
        pack([("FCALL", "f", 1, True)], connection.encoder)  # type: ignore[list-item]
    assert pack([("FCALL", "f", 0, 1.5)], connection.encoder).endswith(b"$3\r\n1.5\r\n")  # type: ignore[list-item]
