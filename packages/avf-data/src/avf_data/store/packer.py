"""Packing finished tasks' clips into shards of a target size in bytes, in the order of the inputs.

A worker writes a task's clips into a segment (``segments/<task>.tar``) whatever their number;
the driver then copies segments, in the order of their inputs, into the shard being filled
(``shards/shard-NNNNNN.tar.part``), splitting a segment between two shards where the target
size falls, and seals the shard when the next clip would not fit: end-of-archive marker,
index, rename to ``shard-NNNNNN.tar``. Shards are numbered without gaps, so the corpus is one
brace pattern.

Every step is logged after it is durable (``pack``: these clips of this task are now at these
bytes of this shard, and a task's first pack line is its place in the order, so a task without
clips gets one of none; ``seal``: this shard is complete), so a crash leaves a state the next run
repairs exactly: a ``.part`` longer than its logged length is cut back, a seal that was not
logged is finished, a segment whose clips are all placed is deleted.

:class:`PackState` is what the store checkpoints in ``state.json``: the shard being filled and
the finished tasks whose clips are not placed yet (the backlog), so a resumed run needs the
log's tail only, not the whole log.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..tars import IndexBuilder, copy_range, fsync_dir, index_path, tar_end, write_index
from .folder import OutputFolder
from .log import JsonLog


@dataclass
class Waiting:
    """A finished task whose segment is not fully packed yet."""

    task_id: str
    line: int  # byte offset of its task line in build.jsonl
    seq: int = 0  # its place in the run's input order (packing order)
    packed: int = 0  # samples of its segment already in shards


@dataclass
class PackState:
    """The packer's state plus what the store needs to resume (checkpointed as ``state.json``)."""

    log_bytes: int = 0  # build.jsonl up to here is reflected in this state
    done_ids: int = 0  # entries of done-ids.u64 that belong to that part of the log
    next_shard: int = 0  # number of the shard being filled (or the next one)
    open_bytes: int = 0  # bytes of members in that shard's .part
    open_index: dict[str, Any] = field(default_factory=dict)  # IndexBuilder state of that shard
    backlog: list[Waiting] = field(default_factory=list)  # in packing order

    def to_json(self) -> dict[str, Any]:
        return {"layout": 2, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PackState:
        return cls(
            log_bytes=int(data.get("log_bytes", 0)),
            done_ids=int(data.get("done_ids", 0)),
            next_shard=int(data.get("next_shard", 0)),
            open_bytes=int(data.get("open_bytes", 0)),
            open_index=dict(data.get("open_index") or {}),
            backlog=[Waiting(**w) for w in data.get("backlog", [])],
        )

    @property
    def open_samples(self) -> int:
        """Clips in the shard being filled, as of the checkpoint."""
        return len(self.open_index.get("offsets", []))


def segment_rows(task: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest rows of a task line, in the order of its segment's samples."""
    return [row for rec in task["inputs"] for row in rec.get("manifest", [])]


class ShardPacker:
    """Copies segments into sized shards and seals them (see module doc)."""

    def __init__(
        self,
        folder: OutputFolder,
        log: JsonLog,
        state: PackState,
        target_bytes: int,
        max_samples: int | None = None,
    ) -> None:
        self.folder, self.log = folder, log
        self.target_bytes = max(1, int(target_bytes))
        self.max_samples = max_samples
        self.sealed: list[str] = []  # shards sealed by this packer (this run)
        self.use(state)

    def use(self, state: PackState) -> None:
        """Continue from ``state`` (a checkpoint)."""
        self.state = state
        self.index = IndexBuilder.from_state(state.open_index)  # of the shard being filled

    def save(self) -> None:
        """Put the shard being filled into :attr:`state` (before a checkpoint)."""
        self.state.open_index = self.index.to_state() if self.open_samples else {}

    @property
    def open_samples(self) -> int:
        return len(self.index.offsets)

    # ---- packing ---------------------------------------------------------------------------

    def _fits(self, sample_bytes: int, samples: int, size: int) -> bool:
        if self.open_samples + samples == 0:
            return True  # an empty shard takes any sample, even one larger than the target
        if self.max_samples is not None and self.open_samples + samples >= self.max_samples:
            return False
        return self.state.open_bytes + size + sample_bytes <= self.target_bytes

    def pack(self, waiting: Waiting, task: dict[str, Any] | None = None) -> None:
        """Place the rest of ``waiting``'s segment into shards (sealing full ones). A task
        without clips gets a pack line of no clips: its place in the order all the same."""
        task = task if task is not None else self.log.read_at(waiting.line)
        seg = task.get("segment")
        if not seg or seg["samples"] == 0:
            self.log.append({"kind": "pack", "task_id": task["task_id"], "first": 0, "count": 0})
            return
        path = self.folder.root / seg["name"]
        offsets, n = seg["offsets"], seg["samples"]

        def span(i: int) -> int:
            return (offsets[i + 1] if i + 1 < n else seg["data_bytes"]) - offsets[i]

        with open(path, "rb") as src:
            while waiting.packed < n:
                first, count, size = waiting.packed, 0, 0
                while first + count < n and self._fits(span(first + count), count, size):
                    size += span(first + count)
                    count += 1
                if count == 0:
                    self.seal()
                    continue
                part = self.folder.part(self.state.next_shard)
                with open(part, "ab") as dst:
                    dst.truncate(self.state.open_bytes)  # anything past the logged length was never committed
                    dst.seek(self.state.open_bytes)
                    copy_range(src, dst, offsets[first], size)
                    dst.flush()
                    os.fsync(dst.fileno())
                record = {
                    "kind": "pack",
                    "task_id": task["task_id"],
                    "first": first,
                    "count": count,
                    "shard": self.state.next_shard,
                    "at": self.state.open_bytes,
                }
                self.log.append(record)
                self.apply(record, task, waiting)
                if first + count < n:  # the next sample did not fit
                    self.seal()
        path.unlink(missing_ok=True)

    def apply(self, record: dict[str, Any], task: dict[str, Any], waiting: Waiting) -> None:
        """Reflect a logged ``pack`` line in the state (while packing, and when replaying a log)."""
        if not record["count"]:
            return
        seg = task["segment"]
        offsets, n = seg["offsets"], seg["samples"]
        rows = segment_rows(task)
        exts = seg.get("members", [])
        first, count, at = record["first"], record["count"], record["at"]
        base = offsets[first]
        for i in range(first, first + count):
            self.index.add(at + offsets[i] - base, exts, rows[i] if i < len(rows) else None)
        end = offsets[first + count] if first + count < n else seg["data_bytes"]
        self.state.open_bytes = at + end - base
        self.state.next_shard = int(record["shard"])
        waiting.packed = first + count

    def seal(self) -> str | None:
        """Complete the shard being filled: marker, index, rename; log it. Returns its name."""
        st = self.state
        if self.open_samples == 0:
            return None
        number = st.next_shard
        part, final = self.folder.part(number), self.folder.shard(number)
        end = tar_end(st.open_bytes)
        with open(part, "r+b") as fh:
            fh.truncate(st.open_bytes)
            fh.seek(st.open_bytes)
            fh.write(end)
            fh.flush()
            os.fsync(fh.fileno())
        size = st.open_bytes + len(end)
        write_index(final, self.index.build(st.open_bytes, size))
        os.replace(part, final)
        fsync_dir(final.parent)
        return self._sealed(number, size)

    def _sealed(self, number: int, size: int) -> str:
        self.log.append({"kind": "seal", "shard": number, "samples": self.open_samples, "bytes": size})
        self.apply_seal(number)
        name = self.folder.shard_name(number)
        self.sealed.append(name)
        return name

    def apply_seal(self, number: int) -> None:
        self.state.next_shard = number + 1
        self.state.open_bytes = 0
        self.state.open_index = {}
        self.index = IndexBuilder()

    # ---- recovery --------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Bring the shard files in line with the (replayed) state; returns the files removed."""
        st = self.state
        number = st.next_shard
        if self.open_samples:
            part, final = self.folder.part(number), self.folder.shard(number)
            if part.exists():
                with open(part, "r+b") as fh:
                    fh.truncate(st.open_bytes)  # appends after the last pack line were never committed
            elif final.exists() and final.stat().st_size == st.open_bytes + len(tar_end(st.open_bytes)):
                self._sealed(number, final.stat().st_size)  # renamed before the crash, seal not logged
            else:
                raise ValueError(
                    f"{self.folder.root}: build.jsonl says {self.folder.shard_name(number)} is being filled, "
                    "but neither it nor its .part is there; was the folder changed by hand?"
                )
        # anything at or past the next shard number that the log does not account for
        keep = self.folder.part(st.next_shard) if self.open_samples else None
        removed = []
        for number in (st.next_shard, st.next_shard + 1):
            shard = self.folder.shard(number)
            for p in (shard, self.folder.part(number), index_path(shard), index_path(shard).with_suffix(".json.tmp")):
                if p != keep and p.exists():
                    p.unlink()
                    removed.append(p.relative_to(self.folder.root).as_posix())
        return removed
