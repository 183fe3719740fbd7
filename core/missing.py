"""The one missing-value sentinel: "no value here", distinct from every cached value.

Cached values may be None, 0 or "", so absence needs its own object. Reads
that found nothing return :data:`MISSING`; optional arguments default to it.
Test with ``value is MISSING``.
"""

from __future__ import annotations

import enum
from typing import Final


class Missing(enum.Enum):
    """Type of :data:`MISSING`; falsey, and distinct from every cached value (None, 0, "")."""

    MISSING = "MISSING"

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "MISSING"


#: No value (a read that found nothing usable, or an argument not given).
MISSING: Final = Missing.MISSING

__all__ = ["MISSING", "Missing"]
