"""The project's expensive computation, as plain code."""

import hashlib
import time


def price(symbol: str, day: int) -> float:
    """A slow, deterministic price (stands for a model call or a heavy query)."""
    time.sleep(0.3)
    digest = hashlib.sha256(f"{symbol}:{day}".encode()).digest()
    return round(10 + int.from_bytes(digest[:4], "big") % 9000 / 100, 2)
