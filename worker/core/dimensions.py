"""What a rules file defines: dimensions of ordered classes (a segment is a dimension of
one class), and the consent that withholds some of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

Classes = dict[str, str | None]  # dimension -> class (None: no class applies)
SEGMENT_CLASS: Final = "in"  # a segment's one class


@dataclass(frozen=True, slots=True)
class ClassRule:
    name: str
    when: str | None
    label: str = ""  # what people read (the demo's view); the name when the file gives none

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)


@dataclass(frozen=True, slots=True)
class Dimension:
    name: str
    applies: str | None
    classes: tuple[ClassRule, ...]
    requires_model: bool = False  # dropped, once validated, from rules with no [model]


@dataclass(frozen=True, slots=True)
class Consent:
    """``[consent]``: while a customer's ``trait`` is false, their changes on the ``suppress``
    dimensions are withheld from the change topic (the class is still tracked)."""

    trait: str = "marketing_consent"
    suppress: frozenset[str] = frozenset()
