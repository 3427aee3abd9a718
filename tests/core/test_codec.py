"""State and outbox encodings round-trip exactly and refuse what they cannot read."""

import zlib

import msgspec
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.core.strategies import ACTIVITY, T0, histories, orders, state_of, visits
from worker.core.changes import Cause
from worker.core.codec import FORMAT, declared_format, decode_state, encode_state
from worker.core.engine import evaluate
from worker.core.events import Visit
from worker.core.outbox import OutRecord
from worker.core.packing import VOCABULARY, CorruptRecord
from worker.core.rules import load_rules
from worker.core.state import NO_TIME, PAID, PLACED, CustomerState, OrderRecord
from worker.core.timeutil import UTC_CALENDAR, Calendar

RULES = load_rules(None)
DAY = 86_400_000


@given(histories, st.integers(20_454, 21_500))
def test_state_round_trip(events: list, day: int) -> None:
    state = state_of(events)
    evaluate(state, RULES, day, Cause("timer", None, day * 86_400_000), 0)
    back = decode_state("c1", encode_state(state))
    assert back == state
    assert back.counted(2, UTC_CALENDAR) == state.counted(2, UTC_CALENDAR)
    assert encode_state(back) == encode_state(state)


instants_near = st.integers(T0 - 900 * DAY, T0 + 900 * DAY)
records = st.builds(
    OrderRecord,
    st.integers(0, 15),
    st.booleans(),
    st.just(NO_TIME) | st.integers(T0 - 900 * DAY, T0 + 900 * DAY),
    st.integers(0, 10**9),
    st.none()
    | st.dictionaries(st.text(max_size=12), st.integers(1, 10**9), min_size=1, max_size=3),
)


@given(st.dictionaries(st.text(max_size=24), records, max_size=60), st.booleans())
def test_any_order_ids_and_instants_round_trip(orders: dict, visited: bool) -> None:
    """Ids with and without a shared prefix (empty ones, one a prefix of another), orders
    known only from a cancellation, lists long enough to be stored compressed."""
    state = CustomerState(
        "c1", orders=orders, first_visit_ms=T0 if visited else None, last_visit_ms=None
    )
    data = encode_state(state)
    assert decode_state("c1", data) == state
    assert msgspec.msgpack.decode(data)[0] == FORMAT == 7


def test_states_are_compact_messagepack_without_compression() -> None:
    """Format 7: order ids past their shared prefix, each order's instant a step from the
    one before, the rules hash as bytes; 40 orders take under 13 bytes each, with no zlib to
    pay for."""
    large = CustomerState(
        "c1",
        orders={f"order-{i}": OrderRecord(2, True, T0 + i * DAY, 1_000 + i) for i in range(40)},
        rules_version="sha256:58b40df6bc4446c6",
    )
    packed = encode_state(large)
    assert packed[:3] == b"\xdc\x00\x11" and len(packed) < 40 * 13  # an array of 17
    doc = msgspec.msgpack.decode(packed)
    assert doc[2] == "order-" and doc[3][4:8] == ["1", 18, DAY, 1_001]
    assert doc[13] == bytes.fromhex("58b40df6bc4446c6")
    assert decode_state("c1", packed) == large
    odd = CustomerState("c1", rules_version="sha256:58B4 0d")  # not lowercase hex: as text
    assert decode_state("c1", encode_state(odd)) == odd
    assert declared_format(packed) == 7 and declared_format(b"\x91\x63") == 99  # [99]


def test_neighbouring_instants_and_default_dimensions_are_implied() -> None:
    """The last visit equal to the last key action and the region's instant equal to the
    last visit are stored as ``true``; key action steps as 4-byte integers; the default
    rules' dimensions left out, the ones with a since instant as a bit mask."""
    state = CustomerState(
        "c1",
        first_visit_ms=T0,
        last_visit_ms=T0 + 3 * DAY,
        key_actions=[T0 + DAY, T0 + 3 * DAY],
        region="EU",
        region_ms=T0 + 3 * DAY,
        classes={"lifecycle": "active", "value_tier": None, "rfm": "loyal"},
        since_ms={"rfm": T0 + DAY, "lifecycle": T0},
    )
    packed = encode_state(state)
    doc = msgspec.msgpack.decode(packed)
    assert doc[6] is True and doc[8] is True
    assert doc[15] == DAY.to_bytes(4, "little") + (2 * DAY).to_bytes(4, "little")
    assert doc[9] is None and doc[10] == [9, None, 16]
    assert doc[11] == 0b101 and doc[12] == [0, DAY]  # in the dimensions' order
    assert decode_state("c1", packed) == state


# Written by format 3 (before order id prefixes and compression): a paid, a placed and a
# refund-only order, a visit, and classes with and without a class.
FORMAT_3 = (
    b'[3,-4611686018427387904,["A1",18,4611687785739387904,12500,"A2",1,4611687785912187904,4000,'
    b'"B7",8,0,0],4611687785652987909,4611687785652987909,"North-East",4611687785652987909,[0,8,'
    b"4611687786516987904,1,14,4611687786516987904,2,8,4611687786516987904,3,26,"
    b'4611687786516987904,4,29,4611687786516987904,5,null,null],"58b40df6bc4446c6",20470]'
)


def test_states_written_by_format_3_still_read() -> None:
    classified = T0 + 10 * DAY
    state = decode_state("c1", FORMAT_3)
    assert state == CustomerState(
        "c1",
        orders={
            "A1": OrderRecord(2, True, T0 + DAY, 12_500),
            "A2": OrderRecord(1, False, T0 + 3 * DAY, 4_000),
            "B7": OrderRecord(8, False, NO_TIME, 0),
        },
        first_visit_ms=T0 + 5,
        last_visit_ms=T0 + 5,
        region="North-East",
        region_ms=T0 + 5,
        classes={
            "lifecycle": "new",
            "value_tier": "low",
            "rfm": "new",
            "membership": "ordinary",
            "tenure": "short",
            "old_customer": None,
        },
        since_ms=dict.fromkeys(
            ("lifecycle", "value_tier", "rfm", "membership", "tenure"), classified
        ),
        rules_version="sha256:58b40df6bc4446c6",
        due_day=20470,
    )
    assert decode_state("c1", encode_state(state)) == state


# Written by format 4 (before partial refunds and key actions): an order id prefix, a paid
# order and a refund-only one, visits, and classes of every shape.
FORMAT_4 = (
    b'[4,1767225600005,"shop-",["A1",18,86399995,12500,"B7",8,null,0],0,2,"North-East",0,'
    b'[[0,8,86399995],[5],["custom_x","gold",86399995]],"58b40df6bc4446c6",20485]'
)


def test_states_written_by_format_4_still_read() -> None:
    state = decode_state("c1", FORMAT_4)
    assert state == CustomerState(
        "c1",
        orders={
            "shop-A1": OrderRecord(2, True, T0 + DAY, 12_500),
            "shop-B7": OrderRecord(8, False, NO_TIME, 0),
        },
        first_visit_ms=T0 + 5,
        last_visit_ms=T0 + 7,
        region="North-East",
        region_ms=T0 + 5,
        classes={"lifecycle": "new", "old_customer": None, "custom_x": "gold"},
        since_ms={"lifecycle": T0 + DAY, "custom_x": T0 + DAY},
        rules_version="sha256:58b40df6bc4446c6",
        due_day=20485,
    )
    assert state.key_actions == [] and all(r.refunds is None for r in state.orders.values())
    assert decode_state("c1", encode_state(state)) == state


names = st.sampled_from(["lifecycle", "value_tier", "rfm", "active", "churn_risk", "in"]) | st.text(
    max_size=12
)
trait_values = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8)


@st.composite
def any_states(draw: st.DrawFn) -> CustomerState:
    """Every field at once, in every shape: traits (removed ones too), classes with and
    without since instants (and since instants of dimensions without a class), names inside
    and outside the vocabulary, the default rules' dimensions, the withheld changes consent
    holds back, key actions close together and far apart, and instants equal to their
    neighbours (format 7 stores those as ``true``)."""
    if draw(st.booleans()):
        classes = dict(
            zip(
                VOCABULARY[:6],
                draw(st.lists(st.none() | names, min_size=6, max_size=6)),
                strict=True,
            )
        )
    else:
        classes = draw(st.dictionaries(names, st.none() | names, max_size=7))
    since_ms = {d: draw(instants_near) for d in classes if draw(st.booleans())}
    if draw(st.booleans()):
        since_ms.update(draw(st.dictionaries(names, instants_near, max_size=2)))
    spread = draw(st.sampled_from([DAY, 900 * DAY]))
    key_actions = sorted(
        draw(st.lists(st.integers(T0 - spread, T0 + spread), max_size=20, unique=True))
    )
    last_visit = draw(st.none() | instants_near)
    if key_actions and draw(st.booleans()):
        last_visit = key_actions[-1]
    region_ms = draw(st.just(-1) | instants_near)
    if last_visit is not None and draw(st.booleans()):
        region_ms = last_visit
    return CustomerState(
        "c1",
        orders=draw(st.dictionaries(st.text(max_size=10), records, max_size=8)),
        first_visit_ms=draw(st.none() | instants_near),
        last_visit_ms=last_visit,
        key_actions=key_actions,
        region=draw(st.none() | st.text(max_size=6)),
        region_ms=region_ms,
        traits=draw(
            st.dictionaries(st.text(max_size=8), st.tuples(instants_near, trait_values), max_size=4)
        ),
        classes=classes,
        since_ms=since_ms,
        withheld=draw(st.dictionaries(names, st.none() | names, max_size=3)),
        rules_version=draw(st.sampled_from(["", "sha256:58b40df6bc4446c6", "sha256:58B4", "x"])),
        due_day=draw(st.none() | st.integers(0, 40_000)),
    )


@given(any_states())
def test_any_state_round_trips(state: CustomerState) -> None:
    packed = encode_state(state)
    assert decode_state("c1", packed) == state
    assert encode_state(decode_state("c1", packed)) == packed


@given(
    any_states(),
    st.lists(st.one_of(orders(), visits()), max_size=3),
    st.sampled_from([PAID, PLACED | PAID]),
    st.sampled_from([UTC_CALENDAR, Calendar("Asia/Shanghai")]),
)
def test_a_state_left_as_decoded_acts_as_one_built(
    state: CustomerState, events: list, counting: int, calendar: Calendar
) -> None:
    """A decoded state keeps its orders as stored until an order event needs them: its
    index is counted from them (partial refunds off their amounts), and it encodes as the state with every record built, after
    any events (a visit earlier than every instant moves the base the orders step from)."""
    assume(all(r.ms != NO_TIME for r in state.orders.values() if r.flags & counting))
    packed = encode_state(state)
    lazy, built = decode_state("c1", packed), decode_state("c1", packed)
    assert built.orders == state.orders  # builds the records
    for s in (lazy, built):
        s.index(counting, calendar)
    assert lazy.counted(counting, calendar) == built.counted(counting, calendar)
    assert (lazy.packed_orders is None) == (not state.orders)  # partial refunds too
    for event in events:
        assert lazy.apply(event, ACTIVITY) == built.apply(event, ACTIVITY)
        assert encode_state(lazy) == encode_state(built)
    assert lazy.counted(counting, calendar) == built.counted(counting, calendar)
    assert lazy == built


@given(
    any_states(),
    st.lists(st.one_of(orders(), visits()), max_size=3),
    st.integers(20_454, 21_500),
)
def test_what_a_decoded_state_writes_back_as_read_is_what_its_values_give(
    state: CustomerState, events: list, day: int
) -> None:
    """The encoder writes the class layout, the since instants and the key actions back as
    they were read while unchanged: the bytes are those of a state built from the same
    values, after events that move the base, the key actions and the classes."""
    assume(all(r.ms != NO_TIME for r in state.orders.values() if r.flags & RULES.counting))
    lazy, twin = decode_state("c1", encode_state(state)), decode_state("c1", encode_state(state))
    for event in [*events, None]:
        if event is None:  # classified last: classes and since instants may move
            for s in (lazy, twin):
                evaluate(s, RULES, day, Cause("timer", None, day * DAY), 0)
        else:
            assert lazy.apply(event, ACTIVITY) == twin.apply(event, ACTIVITY)
        assert encode_state(lazy) == encode_state(built_anew(twin))


def built_anew(state: CustomerState) -> CustomerState:
    """A state holding the same values as ``state`` and nothing as read."""
    return CustomerState(
        state.customer_id, dict(state.orders), state.first_visit_ms, state.last_visit_ms,
        list(state.key_actions), state.region, state.region_ms, dict(state.traits),
        dict(state.classes), dict(state.since_ms), dict(state.withheld), state.rules_version,
        state.due_day,
    )  # fmt: skip


def test_since_instants_never_read_step_from_a_base_that_moved() -> None:
    """A visit before every instant the state holds moves its base: the since instants
    written back as read are re-based, and the key actions' field is written anew."""
    state = CustomerState(
        "c1",
        key_actions=[T0 + 2 * DAY, T0 + 3 * DAY],
        classes={"lifecycle": "active"},
        since_ms={"lifecycle": T0 + DAY},
    )
    lazy = decode_state("c1", encode_state(state))
    early = Visit("v1", "c1", T0 - 30 * DAY, "page_view", None)
    assert lazy.apply(early, ACTIVITY) and state.apply(early, ACTIVITY)
    assert lazy.since_unread  # the visit did not read them
    assert encode_state(lazy) == encode_state(state)
    assert decode_state("c1", encode_state(lazy)) == state


def test_orders_left_as_decoded_step_from_a_base_that_moved() -> None:
    """A visit before every instant the state holds moves its base: the stored orders' first
    step is re-based, so the bytes are those of the state with its records built."""
    state = CustomerState(
        "c1",
        orders={"A1": OrderRecord(2, True, T0 + 5 * DAY, 1_000)},
        first_visit_ms=T0 + DAY,
        last_visit_ms=T0 + 5 * DAY,
    )
    lazy = decode_state("c1", encode_state(state))
    early = Visit("v1", "c1", T0 - 30 * DAY, "page_view", None)
    assert lazy.apply(early, ACTIVITY) and state.apply(early, ACTIVITY)
    assert lazy.packed_orders is not None  # a visit leaves the orders as stored
    assert encode_state(lazy) == encode_state(state)
    assert decode_state("c1", encode_state(lazy)) == state


def test_orders_left_as_decoded_count_as_their_records_do() -> None:
    """Straight from the stored form: voided orders (cancelled or refunded in full) and
    orders not in a counting status do not count; paid ones do, placed ones where placing
    counts."""
    state = CustomerState(
        "c1",
        orders={
            "A1": OrderRecord(PAID, True, T0 + DAY, 1_000),
            "A2": OrderRecord(PAID | 4, True, T0 + 2 * DAY, 2_000),  # paid, then cancelled
            "A3": OrderRecord(PAID | 8, True, T0 + 3 * DAY, 3_000),  # paid, then refunded
            "A4": OrderRecord(PLACED, False, T0 + 4 * DAY, 4_000),
        },
    )
    for counting, counted in ((PAID, [1_000]), (PLACED | PAID, [1_000, 4_000])):
        lazy = decode_state("c1", encode_state(state))
        assert [amount for _, amount in lazy.counted(counting, UTC_CALENDAR)] == counted
        assert lazy.packed_orders is not None  # counted without building the records
        assert lazy.counted(counting, UTC_CALENDAR) == state.counted(counting, UTC_CALENDAR)


def test_orders_left_as_decoded_count_partial_refunds() -> None:
    """Partial refunds come off their order's amount straight from the stored form; refunds
    that add up to the amount void the order, as they do its record."""
    state = CustomerState(
        "c1",
        orders={
            "A1": OrderRecord(PAID, True, T0 + DAY, 1_000, {"r1": 300}),
            "A2": OrderRecord(PAID, True, T0 + 2 * DAY, 2_000, {"r1": 1_500, "r2": 500}),
            "A3": OrderRecord(PAID, True, T0 + 3 * DAY, 3_000),
        },
    )
    lazy = decode_state("c1", encode_state(state))
    assert lazy.counted(PAID, UTC_CALENDAR) == [(T0 + DAY, 700), (T0 + 3 * DAY, 3_000)]
    assert lazy.packed_orders is not None  # counted without building the records
    assert lazy.counted(PAID, UTC_CALENDAR) == state.counted(PAID, UTC_CALENDAR)


def test_partial_refunds_and_key_actions_round_trip() -> None:
    state = CustomerState(
        "c1",
        orders={
            "A1": OrderRecord(2, True, T0, 10_000, {"r1": 500, "r2": 2_000}),
            "A2": OrderRecord(0, False, NO_TIME, 0, {"r3": 3_000}),  # refund before its order
            "A3": OrderRecord(2, True, T0 + DAY, 1_000),
        },
        key_actions=[T0 - 3 * DAY, T0 + 17],
    )
    assert decode_state("c1", encode_state(state)) == state


# Written by format 5 (positional JSON, zlib-compressed from 256 bytes): a compressed state
# with partial refunds, key actions, traits (one removed) and classes of every shape, and a
# plain one.
FORMAT_5_COMPRESSED = bytes.fromhex(
    "78014d8e4b0ac2400c40ef927584a49d49dba50bb75e6018c47e6c85da91760a1edfd4ea602010f27979ce"
    "2217229588a12d1096213c0f4740070cc82566b6caf611ef0b1920e1b48e23924f539baa02e11ce6381c4e"
    "d725426a5b748eb0c4dc58f9e03c3aab09cdbac4f0b8bc00a10f630b7f1b1ec196b5a1f62675638c914614"
    "48a654989ace2a685599b5ccf54eb10aa4df4b2e367c1fa62e5930efe210efdd9cba547d5f7bff06f98b419c"
)
FORMAT_5 = (
    b'[5,1767225600000,"",["A1",18,0,10000],null,null,null,null,[],"58b40df6bc4446c6",20485,'
    b'[0,"r1",500],[17],["vip",9,true]]'
)

# Format 5 with the trailing field consent added: the classes a withheld change would move
# to (a class, another outside the vocabulary, none).
FORMAT_5_WITHHELD = (
    b'[5,1767225600000,"",["A1",18,0,10000],null,null,null,null,[[0,9,0],[1,14]],'
    b'"58b40df6bc4446c6",20485,[],[],[],[[0,11],["custom_x"],[1,"gold"]]]'
)


def test_states_written_by_format_5_still_read() -> None:
    compressed = decode_state("c1", FORMAT_5_COMPRESSED)
    assert compressed == CustomerState(
        "c1",
        orders={
            "shop-A1": OrderRecord(2, True, T0, 10_000, {"r1": 500}),
            "shop-A2": OrderRecord(0, False, NO_TIME, 0, {"r3": 3_000}),
        },
        first_visit_ms=T0 + 5,
        last_visit_ms=T0 + 7,
        key_actions=[T0 - 3 * DAY, T0 + 17],
        region="North-East",
        region_ms=T0 + 5,
        traits={"gone": (T0 + 11, None), "tier": (T0 + 9, "gold")},
        classes={"lifecycle": "new", "old_customer": None, "custom_x": "gold"},
        since_ms={"lifecycle": T0 + DAY, "custom_x": T0 + DAY},
        rules_version="sha256:58b40df6bc4446c6",
        due_day=20485,
    )
    plain = decode_state("c1", FORMAT_5)
    assert plain == CustomerState(
        "c1",
        orders={"A1": OrderRecord(2, True, T0, 10_000, {"r1": 500})},
        key_actions=[T0 + 17],
        traits={"vip": (T0 + 9, True)},
        rules_version="sha256:58b40df6bc4446c6",
        due_day=20485,
    )
    withheld = decode_state("c1", FORMAT_5_WITHHELD)
    assert withheld == CustomerState(
        "c1",
        orders={"A1": OrderRecord(2, True, T0, 10_000)},
        classes={"lifecycle": "active", "value_tier": "low"},
        since_ms={"lifecycle": T0},
        withheld={"lifecycle": "churn_risk", "custom_x": None, "value_tier": "gold"},
        rules_version="sha256:58b40df6bc4446c6",
        due_day=20485,
    )
    for state in (compressed, plain, withheld):
        assert decode_state("c1", encode_state(state)) == state


# Written by format 6 (MessagePack; orders as flat quadruples from one base, key actions as
# integer steps, classes as flat pairs): every field in use, withheld classes too; and a
# state with no orders and a rules version that is not a hash.
FORMAT_6 = bytes.fromhex(
    "dc001006cf0000019b67679400a573686f702d9ca2413112ce14997000cd30d4a2413201cf000000014470a4"
    "00cd0fa0a2423700c000ce0f731405ce0f731411aa4e6f7274682d45617374ce0f73141196000905c0a86375"
    "73746f6d5f78a4676f6c64c40858b40df6bc4446c6cd50059600a27231cd01f402a27233cd0bb89200ce0f73"
    "141196a4676f6e65ce0f73140bc0a474696572ce0f731409a4676f6c6493ce14997000c0ce19bfcc0094000b"
    "a8637573746f6d5f78c0"
)
FORMAT_6_PLAIN = bytes.fromhex(
    "9f06cf0000019b76daa800a0900000c0c0920006a83d3d637573746f6dc09090909100"
)


def test_states_written_by_format_6_still_read() -> None:
    full = decode_state("c1", FORMAT_6)
    assert full == CustomerState(
        "c1",
        orders={
            "shop-A1": OrderRecord(2, True, T0 + DAY, 12_500, {"r1": 500}),
            "shop-A2": OrderRecord(1, False, T0 + 60 * DAY, 4_000),
            "shop-B7": OrderRecord(0, False, NO_TIME, 0, {"r3": 3_000}),
        },
        first_visit_ms=T0 + 5,
        last_visit_ms=T0 + 17,
        key_actions=[T0 - 3 * DAY, T0 + 17],
        region="North-East",
        region_ms=T0 + 17,
        traits={"gone": (T0 + 11, None), "tier": (T0 + 9, "gold")},
        classes={"lifecycle": "active", "old_customer": None, "custom_x": "gold"},
        since_ms={"lifecycle": T0 + DAY, "custom_x": T0 + 2 * DAY},
        withheld={"lifecycle": "churn_risk", "custom_x": None},
        rules_version="sha256:58b40df6bc4446c6",
        due_day=20485,
    )
    plain = decode_state("c1", FORMAT_6_PLAIN)
    assert plain == CustomerState(
        "c1",
        first_visit_ms=T0,
        last_visit_ms=T0,
        classes={"lifecycle": "potential"},
        since_ms={"lifecycle": T0},
        rules_version="=custom",
    )
    assert declared_format(FORMAT_6) == 6
    for state in (full, plain):
        assert decode_state("c1", encode_state(state)) == state


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"[]",
        b'{"f": 2}',
        b'{"f": 1, "o": {}}',
        b'{"f":1,"o":{"a":[1]}}',
        b"[5]",
        b"x\x9c not deflate",
        zlib.compress(b"[4, 1]"),
        zlib.compress(b"not json"),
        b"\x91\x06",  # MessagePack [6]
        b"\x92\x08\x00",  # a format from a newer release
        b"\xc1",  # never used in MessagePack
        b"\x9f\x06" + b"\xc0" * 14,  # [6, null, ...]
        b"\xdc\x00\x11\x07" + b"\xc0" * 16,  # [7, null, ...]
        b"\xdc\x00\x11\x07\x00\xa0\x95\xa1a\x00\x00\x00\x00" + b"\xc0" * 13,  # orders not in fours
        msgspec.msgpack.encode([7, 0, "", [], [], 0, True, *[None] * 8, b"\x01\x02\x03", []]),
        # a since instant the mask announces and the list lacks
        msgspec.msgpack.encode([7, 0, "", [], [], *[None] * 5, [9], 1, [], "=v", None, b"", []]),
    ],
)
def test_unreadable_state_is_reported_not_crashed(data: bytes) -> None:
    with pytest.raises(CorruptRecord):
        decode_state("c1", data)


headers = st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=50)), max_size=6).map(tuple)


@given(
    st.text(min_size=1, max_size=40),
    st.none() | st.binary(max_size=200),
    st.none() | st.binary(max_size=2000),
    headers,
)
def test_out_record_round_trip(
    topic: str, key: bytes | None, value: bytes | None, hdrs: tuple
) -> None:
    record = OutRecord(topic, key, value, hdrs)
    assert OutRecord.decode(record.encode()) == record
    with pytest.raises(CorruptRecord):
        OutRecord.decode(record.encode()[:-1])


@given(st.binary(max_size=100))
def test_out_record_decode_refuses_garbage_or_reads_a_record(data: bytes) -> None:
    """Garbage is refused with CorruptRecord (nothing else escapes), or it was a frame: then
    what was read survives a round trip."""
    try:
        record = OutRecord.decode(data)
    except CorruptRecord:
        return
    assert OutRecord.decode(record.encode()) == record
