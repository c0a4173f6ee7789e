"""The build's side of the output folder: commit finished tasks, pack their clips, resume.

``build.jsonl`` is the one record of what a build did. Its lines:

``task``  a finished task, appended (and fsynced) by the driver when a worker returns it: per
          input its manifest rows (without a shard yet), reject rows and counts, and the
          segment (``segments/<task>.tar``) holding its clips with their byte offsets. This
          line is the commit point of the task: its inputs are done.
``pack``  clips ``[first, first+count)`` of a task's segment now sit at byte ``at`` of shard
          ``shard`` (:mod:`avf_data.store.packer`).
``seal``  that shard is complete and renamed into place.

Segments are packed in the order of the inputs (a task waits until every task before it has
finished), so the same inputs give the same shards whatever the worker count and timing.

Resume never reads the whole log: ``state.json`` (a checkpoint written at every seal and
every few hundred commits) says where the shard being filled ends and which finished tasks are
not packed yet, and ``done-ids.u64`` lists the finished inputs; only the log after the
checkpoint is replayed. Every file past what the log commits is removed or cut back: a
segment no line names (its task is redone), appends to a shard after its last ``pack`` line.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .folder import SEGMENT_NAME, OutputFolder, write_atomic
from .log import DoneIds, DoneSet, JsonLog
from .packer import PackState, ShardPacker, Waiting

CHECKPOINT_EVERY = 256  # commits between checkpoints (besides one at every seal)


@dataclass
class Recovery:
    """What opening the store repaired (reported in stats.json's ``run``)."""

    replayed_lines: int = 0
    segments_removed: list[str] = field(default_factory=list)
    shard_files_removed: list[str] = field(default_factory=list)
    backlog: int = 0  # finished tasks of an earlier run packed at the start of this one


class BuildStore:
    """Commits tasks into ``build.jsonl`` and packs their segments into shards (see module doc).

    Use inside the folder's lock: ``open()`` once, ``commit()`` per finished task, ``finish()``
    at the end of a run (packs the rest, seals the last shard, checkpoints).
    """

    def __init__(self, folder: OutputFolder, shard_bytes: int, max_clips_per_shard: int | None = None) -> None:
        self.folder = folder
        self.log = JsonLog(folder.build_log)
        self.done_ids = DoneIds(folder.done_ids)
        self.state = PackState()
        self.packer = ShardPacker(folder, self.log, self.state, shard_bytes, max_clips_per_shard)
        self._since_checkpoint = 0
        self._watermark = 0  # every input position of this run before it is committed
        self._committed: dict[int, int] = {}  # committed [start, end) ranges past the watermark
        self._waiting: list[tuple[int, int, Waiting]] = []  # heap by seq: finished, not yet packable
        self._ticket = itertools.count()
        self._tasks: OrderedDict[str, dict[str, Any]] = OrderedDict()  # recently committed task lines

    # ---- open and resume -------------------------------------------------------------------

    def open(self) -> Recovery:
        """Load the checkpoint, replay the log after it, repair the files; pack the backlog."""
        rec = Recovery()
        self.log.repair()
        state = self._load_state()
        if self.done_ids.count() < state.done_ids or state.log_bytes > self.log.size():
            state = PackState()  # a derived file lost entries (or the log was cut by hand): replay it all
        self._set_state(state)
        self.done_ids.truncate(state.done_ids)
        # tasks finished but not in their place yet (or not fully packed): the checkpoint's
        # backlog, then what the tail adds; an entry leaves with its last pack line, so this
        # stays as small as the backlog
        pending: dict[str, Waiting] = {w.task_id: w for w in state.backlog}
        earlier = [w.task_id for w in state.backlog]
        for offset, line in self.log.iter_from(state.log_bytes):
            rec.replayed_lines += 1
            kind = line.get("kind")
            if kind == "task":
                self.done_ids.append(r["input_id"] for r in line.get("inputs", []))
                if line.get("seq") is not None:  # it waits for its place in the order
                    pending[line["task_id"]] = Waiting(line["task_id"], offset, int(line["seq"]))
                    self._remember(line)
            elif kind == "pack":
                w = pending.get(line["task_id"])
                if w is None:
                    raise ValueError(
                        f"{self.log.path}: a pack line names task {line['task_id']}, which no task line has"
                    )
                task = self._task_line(w)
                self.packer.apply(line, task, w)
                if w.packed >= (task.get("segment") or {}).get("samples", 0):
                    del pending[w.task_id]
            elif kind == "seal":
                self.packer.apply_seal(int(line["shard"]))
        state.backlog = [pending.pop(t) for t in earlier if t in pending]
        state.backlog += sorted(pending.values(), key=lambda w: w.seq)
        state.log_bytes = self.log.size()
        state.done_ids = self.done_ids.count()
        rec.shard_files_removed = self.packer.recover()
        rec.segments_removed = self._remove_stray_segments({w.task_id for w in state.backlog})
        rec.backlog = len(state.backlog)
        for w in list(state.backlog):  # finished tasks of an earlier run go first
            self.packer.pack(w, self._task_line(w))
            state.backlog.remove(w)
        self.checkpoint()
        return rec

    def _load_state(self) -> PackState:
        try:
            return PackState.from_json(json.loads(self.folder.state.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return PackState()
        except (ValueError, TypeError, KeyError):  # unreadable: replay the whole log instead
            return PackState()

    def _set_state(self, state: PackState) -> None:
        self.state = state
        self.packer.use(state)

    def _remember(self, line: dict[str, Any]) -> None:
        self._tasks[line["task_id"]] = line
        while len(self._tasks) > 64:
            self._tasks.popitem(last=False)

    def _task_line(self, w: Waiting) -> dict[str, Any]:
        line = self._tasks.get(w.task_id)
        if line is None:
            line = self.log.read_at(w.line)
            self._remember(line)
        return line

    def _remove_stray_segments(self, keep: set[str]) -> list[str]:
        removed = []
        if self.folder.segments.is_dir():
            for p in self.folder.segments.iterdir():
                if SEGMENT_NAME.match(p.name) and p.name[: -len(".tar")] not in keep:
                    p.unlink()
                    removed.append(p.name)
        return removed

    def done(self) -> DoneSet:
        """The finished inputs (a sorted id array, 8 bytes per input)."""
        return self.done_ids.load()

    # ---- a run -----------------------------------------------------------------------------

    def commit(self, result: dict[str, Any]) -> None:
        """Log a finished task (its inputs are done from here on) and pack what is now in order.

        ``result["seq"]``/``result["n"]``: the positions of its inputs in this run's pending list;
        the task waits until every position before it is committed, then takes its place in the
        order (its clips are packed; a task without clips gets a pack line of none). ``seq``
        None (the import's bad CSV rows) has no place to wait for.
        """
        line = {"kind": "task", **result}
        offset = self.log.append(line)
        self.done_ids.append(r["input_id"] for r in result["inputs"])
        seq = result.get("seq")
        if seq is not None:
            self._remember(line)
            heapq.heappush(self._waiting, (seq, next(self._ticket), Waiting(result["task_id"], offset, seq)))
            self._committed[seq] = seq + int(result.get("n", len(result["inputs"])))
            while self._watermark in self._committed:
                self._watermark = self._committed.pop(self._watermark)
            sealed = len(self.packer.sealed)
            while self._waiting and self._waiting[0][0] < self._watermark:
                _, _, w = heapq.heappop(self._waiting)
                self.packer.pack(w, self._task_line(w))
            if len(self.packer.sealed) > sealed:
                self.checkpoint()
                return
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self.checkpoint()

    def finish(self) -> list[str]:
        """End of a run: pack whatever waits (in order), seal the last shard, checkpoint.
        Returns the shards sealed by this run."""
        while self._waiting:
            _, _, w = heapq.heappop(self._waiting)
            self.packer.pack(w, self._task_line(w))
        self.packer.seal()
        self.checkpoint()
        return list(self.packer.sealed)

    def checkpoint(self) -> None:
        """Write ``state.json``: resume starts from here."""
        st = self.state
        self.done_ids.sync()
        self.packer.save()
        st.backlog = [w for _, _, w in sorted(self._waiting, key=lambda e: (e[0], e[1]))]
        st.log_bytes = self.log.size()
        st.done_ids = self.done_ids.count()
        write_atomic(self.folder.state, json.dumps(st.to_json(), separators=(",", ":")), durable=True)
        self._since_checkpoint = 0

    def close(self) -> None:
        self.log.close()
