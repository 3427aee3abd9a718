"""The core's partitioner is Kafka's default one, byte for byte."""

import zlib

from aiokafka.partitioner import murmur2 as kafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from worker.core.partitioner import murmur2, partition_of


@given(st.binary(max_size=64))
def test_murmur2_is_the_java_clients(data: bytes) -> None:
    assert murmur2(data) == kafka_murmur2(data)


def test_known_partitions_and_a_crc32_partitioner_disagreeing() -> None:
    # Values from the Java client's UtilsTest (signed ints there).
    assert murmur2(b"") == 275646681
    assert murmur2(b"21") == -973932308 & 0xFFFFFFFF
    assert partition_of("bob", 4) == 2
    # librdkafka's default (consistent_random: CRC32) puts bob elsewhere: the case.
    assert zlib.crc32(b"bob") % 4 != partition_of("bob", 4)
