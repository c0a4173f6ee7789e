"""The examples a report shows, chosen from a stream of any length with bounded memory.

A clip (or reject row) is an example when its hash is among the ``k`` smallest: a uniform
random sample that does not depend on the order the rows arrive in, so two runs over the same
build show the same examples, and a running sample tells workers in advance which rows could
still make it (their hash is below the current k-th smallest), so pictures are made for those
only, not one per clip. Reject examples also keep the smallest-hash row of each reason code, so
the contact sheet shows every kind of reject.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from typing import Any


def unit_hash(text: str) -> float:
    """A number in [0, 1) drawn from ``text`` (uniform over texts)."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:13], 16) / float(16**13)


def reject_row_id(row: dict[str, Any]) -> str:
    """A stable name for a reject row (its picture is ``thumbs/<id>.jpg``)."""
    text = f"{row.get('input_id', '')}|{float(row['start']):.6f}|{float(row['end']):.6f}|{row.get('code')}"
    return "r" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


class Reservoir:
    """The ``k`` items with the smallest hash, and per category the one with the smallest hash."""

    def __init__(self, k: int) -> None:
        self.k = max(0, int(k))
        self._heap: list[tuple[float, int, Any]] = []  # (-hash, tiebreak, item): the largest on top
        self._count = itertools.count()
        self.per_category: dict[str, tuple[float, Any]] = {}

    def offer(self, h: float, item: Any, category: str | None = None) -> None:
        if category is not None and (category not in self.per_category or h < self.per_category[category][0]):
            self.per_category[category] = (h, item)
        if self.k == 0:
            return
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, (-h, next(self._count), item))
        elif h < -self._heap[0][0]:
            heapq.heapreplace(self._heap, (-h, next(self._count), item))

    def threshold(self) -> float:
        """Items with a larger hash cannot enter the sample any more."""
        return -self._heap[0][0] if len(self._heap) >= self.k and self._heap else 1.0

    def category_thresholds(self) -> dict[str, float]:
        return {c: h for c, (h, _) in self.per_category.items()}

    def sample(self) -> list[Any]:
        """The ``k`` smallest-hash items, smallest first."""
        return [item for _, _, item in sorted(self._heap, key=lambda e: -e[0])]

    def chosen(self, n: int) -> list[Any]:
        """Up to ``n`` items: one per category first (by category name), then the sample."""
        out: list[Any] = [self.per_category[c][1] for c in sorted(self.per_category)][:n]
        for item in self.sample():
            if len(out) >= n:
                break
            if not any(item is o for o in out):
                out.append(item)
        return out


def wants_thumb(policy: dict[str, Any] | None, h: float, code: str | None) -> bool:
    """Whether a worker should save a picture for a row of hash ``h`` (see module doc)."""
    if policy is None:
        return False
    if h < policy.get("threshold", 1.0):
        return True
    return code is not None and h < policy.get("codes", {}).get(code, 1.0)
