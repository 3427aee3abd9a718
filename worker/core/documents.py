"""The typed JSON documents of the parser's fast path (docs/parser.md): msgspec decodes an
event's bytes into one of these and type-checks it in the same pass.

Each declares exactly the fields its schema names, typed as orjson reads them, and nothing
looser: an unknown field, a nested attribute, an integer orjson would read as a float (beyond
int64 here, a little short of its uint64), a null where the precise path takes one
(``"type": null``): msgspec refuses all of these, and the precise path decides. So no document
passes here that orjson reads otherwise (a duplicate key keeps its last value in both; a number
out of double range fails in both). The rules that need no setting are constraints here; the
others (ids, time, amount, traits) are functions in worker/core/events.py.

This module stays interpreted in the compiled core (setup.py): mypyc drops a class's keyword
arguments (``tag``, ``forbid_unknown_fields``) and rewrites its annotations, which would loosen
these documents without a word.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

Status = Literal["placed", "paid", "cancelled", "refunded"]
CURRENCY: Final = r"^[A-Z]{3}\Z"  # ISO 4217's form
MAX_ACTION: Final = 100
MAX_LABEL: Final = 200  # region, channel
_INT64_MAX: Final = 2**63 - 1
_Int = Annotated[int, msgspec.Meta(ge=-_INT64_MAX - 1, le=_INT64_MAX)]
_Scalar = str | _Int | float | bool | None
_Label = Annotated[str, msgspec.Meta(max_length=MAX_LABEL)]


class Doc(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, gc=False):
    event_id: str
    customer_id: str
    occurred_at: str


class OrderDoc(Doc, tag="order"):
    amount: _Int | float | str
    currency: Annotated[str, msgspec.Meta(pattern=CURRENCY)]
    status: Status
    order_id: str | None = None
    items: Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)] | None = None
    region: _Label | None = None
    channel: _Label | None = None
    attributes: dict[str, _Scalar] | None = None


class VisitDoc(Doc, tag="visit"):
    action: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ACTION)]
    region: _Label | None = None
    channel: _Label | None = None
    attributes: dict[str, _Scalar] | None = None


class ProfileDoc(Doc, tag="profile"):
    traits: dict[str, _Scalar]
    consent: dict[str, _Scalar] | None = None


# A tagged struct decoded alone takes a document without "type" and refuses any other type.
DECODE_ANY: Final = msgspec.json.Decoder(OrderDoc | VisitDoc | ProfileDoc).decode
DECODE: Final = {
    "order": msgspec.json.Decoder(OrderDoc).decode,
    "visit": msgspec.json.Decoder(VisitDoc).decode,
    "profile": msgspec.json.Decoder(ProfileDoc).decode,
}
