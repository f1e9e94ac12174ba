"""How many callers hold a key at once, with the key gone when none does."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["counted"]

K = TypeVar("K", bound=Hashable)


@contextmanager
def counted(holders: Counter[K], key: K) -> Iterator[None]:
    """Count the block as one holder of ``key`` in ``holders``; a key nobody holds any more
    is deleted, so ``key in holders`` says whether anyone does."""
    holders[key] += 1
    try:
        yield
    finally:
        holders[key] -= 1
        if not holders[key]:
            del holders[key]
