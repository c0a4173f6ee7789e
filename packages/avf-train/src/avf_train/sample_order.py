"""The order a loader unit reads samples in, and where in that order it stands.

A unit (one DataLoader worker of one rank) reads, each pass, its share of the shards as one
sequence of *positions* 0, 1, 2, ... (:class:`UnitSamples`) through a shuffle buffer
(:class:`SeekableShuffle`). Both are arithmetic on positions, so the state of a pass after any
sample is three small things: how many positions have entered the buffer, which positions sit
in it, and the buffer RNG's state. A batch carries that state (its *cursor*); resuming from it
reads the buffered samples by their offsets (``.idx.json``) and the rest from where reading
stopped, so the time to the first batch does not depend on how far into the pass the run was,
and the samples that come out are the ones an uninterrupted run would have seen.

A checkpoint without cursors (older runs) still resumes exactly: the cursor is found by running
the shuffle on positions alone (no sample is read), which takes microseconds per sample.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from avf_data.shards import iter_raw_samples, iter_shard_from, read_shard_samples


class UnitSamples:
    """The samples one unit reads in one pass, in order, addressable by position.

    With at least as many shards as units a unit reads every ``units``-th shard of ``order``;
    with fewer it reads every ``units``-th sample of all of them (tiny sets on many workers).
    ``counts()`` gives the samples per shard of ``order`` (from the indexes); it is only called
    when the unit starts past position 0.
    """

    def __init__(self, order: list[str], unit: int, units: int, counts: Callable[[list[str]], list[int]]) -> None:
        self.by_shard = len(order) >= units
        self.shards = order[unit::units] if self.by_shard else list(order)
        self.unit, self.units = unit, units
        self._counts = counts
        self._starts: list[int] | None = None  # first global sample of each shard, then the total

    def _located(self, g: int) -> tuple[int, int] | None:
        """(shard, sample in it) of global sample ``g`` of :attr:`shards`; None past the end."""
        if self._starts is None:
            starts = [0]
            for c in self._counts(self.shards):
                starts.append(starts[-1] + c)
            self._starts = starts
        if g >= self._starts[-1]:
            return None
        j = bisect.bisect_right(self._starts, g) - 1
        return j, g - self._starts[j]

    def _global(self, p: int) -> int:
        return p if self.by_shard else self.unit + p * self.units

    def iter_from(self, p: int = 0) -> Iterator[dict[str, Any]]:
        """Raw samples at positions ``p, p + 1, ...`` to the end of the pass."""
        if p == 0:
            it = iter_raw_samples(self.shards)
            g0 = 0
        else:
            g0 = self._global(p)
            at = self._located(g0)
            if at is None:
                return
            j, k = at

            def chained() -> Iterator[dict[str, Any]]:
                yield from iter_shard_from(self.shards[j], k)
                yield from iter_raw_samples(self.shards[j + 1 :])

            it = chained()
        if self.by_shard:
            yield from it
            return
        first = (self.unit - g0) % self.units  # offset of the unit's next sample from g0
        for off, raw in enumerate(it):
            if off % self.units == first:
                yield raw

    def read(self, positions: list[int]) -> dict[int, dict[str, Any]]:
        """Raw samples at ``positions`` (any order), read by offset."""
        by_shard: dict[int, dict[int, int]] = {}
        for p in positions:
            at = self._located(self._global(p))
            if at is None:
                raise ValueError(f"position {p} is past the end of the unit's samples")
            by_shard.setdefault(at[0], {})[at[1]] = p
        out: dict[int, dict[str, Any]] = {}
        for j, wanted in by_shard.items():
            got = read_shard_samples(self.shards[j], list(wanted))
            for k, p in wanted.items():
                out[p] = got[k]
        return out

    def total(self) -> int:
        """Positions in the pass (needs the counts)."""
        self._located(0)
        assert self._starts is not None
        n = self._starts[-1]
        return n if self.by_shard else len(range(self.unit, n, self.units))


class SeekableShuffle:
    """A shuffle buffer of ``size`` over a stream of positions, whose state can be saved after
    any sample it gives out and restored (see module doc).

    The algorithm is the usual one: append the next item; once the buffer holds ``size``,
    swap a random one to the end and give it out; at the end of the stream give out the rest
    the same way. ``size <= 1`` keeps the order.
    """

    def __init__(self, size: int, rng: np.random.Generator, buffer: list[tuple[int, Any]] | None = None, read: int = 0):
        self.size, self.rng = size, rng
        self.buffer: list[tuple[int, Any]] = list(buffer or [])
        self.read = read

    def state(self) -> dict[str, Any]:
        """Where the shuffle stands (JSON-safe): valid between two samples given out."""
        return {"read": self.read, "buffer": [p for p, _ in self.buffer], "rng": self.rng.bit_generator.state}

    @classmethod
    def restore(cls, size: int, state: dict[str, Any], items: dict[int, Any]) -> SeekableShuffle:
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        return cls(size, rng, [(p, items[p]) for p in state["buffer"]], int(state["read"]))

    def __call__(self, source: Iterator[Any]) -> Iterator[tuple[int, Any]]:
        """``(position, item)`` in shuffled order; ``source`` gives the items of positions
        ``read, read + 1, ...``."""
        buf = self.buffer
        if self.size <= 1:
            while buf:
                yield buf.pop(0)
            for item in source:
                self.read += 1
                yield self.read - 1, item
            return
        for item in source:
            buf.append((self.read, item))
            self.read += 1
            if len(buf) >= self.size:
                yield self._pop()
        while buf:
            yield self._pop()

    def _pop(self) -> tuple[int, Any]:
        buf = self.buffer
        j = int(self.rng.integers(len(buf)))
        buf[j], buf[-1] = buf[-1], buf[j]
        return buf.pop()


def skip_state(size: int, rng: np.random.Generator, total: int, skip: int) -> dict[str, Any]:
    """The shuffle's state after giving out ``skip`` of ``total`` positions, found without
    reading a sample (what a checkpoint without a cursor resumes from)."""
    shuffle = SeekableShuffle(size, rng)
    if skip <= 0:
        return shuffle.state()
    given = 0
    for _ in shuffle(iter([None] * total)):
        given += 1
        if given == skip:
            break
    return shuffle.state()
