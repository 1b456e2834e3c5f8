"""Delta debugging: the smallest sub-list of steps that still fails.

Zeller and Hildebrandt's ddmin over a list: try dropping one of n chunks, then keeping only one,
and refine n until single steps. Dropping comes first because a chaos failure usually needs a
few steps spread over the run (a write early, a kill later), which no single chunk holds. Every test is a caller-supplied predicate; for chaos
runs it re-runs the real SUT, so the search is bounded by a budget of tests and remembers the
answer for every sub-list it has already tried. The result is a sub-list the predicate said
fails (the input itself when nothing smaller did), never one it was merely assumed to fail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Shrunk(Generic[T]):
    items: list[T]
    tests: int  # how many times the predicate ran
    exhausted: bool  # the budget ran out before the result was 1-minimal


def ddmin(items: Sequence[T], fails: Callable[[list[T]], bool], *, budget: int = 100) -> Shrunk[T]:
    """A sub-list of ``items`` for which ``fails`` held; 1-minimal unless ``budget`` ran out.

    ``items`` itself is assumed to fail (the caller observed it); it is not tested again.
    """
    current = list(range(len(items)))
    seen: dict[tuple[int, ...], bool] = {}
    result = Shrunk(list(items), 0, False)

    def test(indices: list[int]) -> bool:
        key = tuple(indices)
        if key not in seen:
            if result.tests >= budget:
                raise _OutOfBudget
            result.tests += 1
            seen[key] = fails([items[i] for i in indices])
        return seen[key]

    n = 2
    try:
        while len(current) >= 2:
            chunks = _split(current, n)
            for chunk in chunks:  # drop one chunk
                complement = [i for i in current if i not in chunk]
                if test(complement):
                    current, n = complement, max(n - 1, 2)
                    break
            else:
                for chunk in chunks:  # keep one chunk only
                    if len(chunks) > 2 and test(chunk):
                        current, n = chunk, 2
                        break
                else:
                    if n >= len(current):
                        break
                    n = min(len(current), n * 2)
    except _OutOfBudget:
        result.exhausted = True
    result.items = [items[i] for i in current]
    return result


class _OutOfBudget(Exception):
    pass


def _split(indices: list[int], n: int) -> list[list[int]]:
    size, extra = divmod(len(indices), n)
    chunks, start = [], 0
    for k in range(n):
        end = start + size + (1 if k < extra else 0)
        chunks.append(indices[start:end])
        start = end
    return [c for c in chunks if c]
