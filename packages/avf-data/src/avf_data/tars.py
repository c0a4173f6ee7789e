"""The tar layer of the shard format: one writer, one index, random access to a sample.

Every tar avf writes (a build's segments and shards, the sync pass's rewrites, the labelled
import, :class:`avf_data.shards.ShardWriter`) goes through :class:`SampleTarWriter`, so members
are laid out one way: a sample's members are consecutive, sorted by extension, with fixed
headers (mtime 0, mode 0644, no owner), which makes the bytes depend on the content only.

Why an index with offsets: a 1.36 M-clip corpus lives in ~10^3 shards of ~512 MB. A reader that
wants sample 2,000 of a shard (a training run resuming mid-epoch, a report showing one clip,
``inspect``) should seek to it rather than read 1 GB of tar headers and data before it. The
index next to ``<name>.tar`` is ``<name>.idx.json``::

    {"format": "avf-shard-index/2", "shard": "shard-000012.tar", "samples": 2480,
     "bytes": 536829440, "offsets": [0, 218624, ...], "data_bytes": 536819200,
     "extensions": {"json": 2480, "mp4": 2480, "wav": 2480}, "seconds": 14880.0,
     "labels": {"3": 120, ...}}

Sample ``i`` occupies bytes ``[offsets[i], offsets[i+1])`` (the last one ends at
``data_bytes``); ``bytes`` is the file size, which tells a stale index (a shard rewritten
since) from a current one. Indexes of format 1 (count and size only) still count samples.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BLOCK = 512
RECORD = 20 * BLOCK  # tar files are padded to whole records (what GNU tar and tarfile write)
INDEX_SUFFIX = ".idx.json"
INDEX_FORMAT = "avf-shard-index/2"

#: The most bytes one member of a sample may hold, checked on its tar header before a byte of
#: it is read: a header promising more (a corrupt or hostile shard) is refused, so a reader's
#: memory stays bounded whatever the header says. A curated clip's json is a few kB (its face
#: boxes ~40 B a frame: 16 MiB is hours of boxes); its media a few MB (1 GiB is hours of video).
MAX_META_MEMBER_BYTES = 16 * 2**20
MAX_MEDIA_MEMBER_BYTES = 2**30
META_EXTENSIONS = frozenset({"json", "cls", "txt"})
MAX_INDEX_BYTES = 64 * 2**20  # an index lists offsets: ~10 B a sample


class ShardReadError(OSError):
    """A shard that cannot be read as samples; the message names the shard and, where one is
    at fault, the member. An OSError, so that callers handling unreadable files handle it."""


_NOT_FILES = (
    (tarfile.TarInfo.issym, "symbolic link"),
    (tarfile.TarInfo.islnk, "hard link"),
    (tarfile.TarInfo.ischr, "character device"),
    (tarfile.TarInfo.isblk, "block device"),
    (tarfile.TarInfo.isfifo, "FIFO"),
)


def member_limit(name: str) -> int:
    """The largest size a member called ``name`` may have (see :data:`MAX_META_MEMBER_BYTES`)."""
    ext = os.path.basename(name).partition(".")[2].rsplit(".", 1)[-1].lower()
    return MAX_META_MEMBER_BYTES if ext in META_EXTENSIONS else MAX_MEDIA_MEMBER_BYTES


def check_member(member: tarfile.TarInfo, shard: str, file_size: int | None = None) -> bool:
    """Whether ``member`` of ``shard`` is a sample file to read (folders are skipped); raises
    :class:`ShardReadError` for what no avf shard holds: links and devices (their "data" is
    elsewhere: a sample would silently lack a member), a size over :func:`member_limit`
    (refused before reading), or one running past the end of a ``file_size``-byte file."""
    where = f"cannot read shard {shard}: member {member.name!r}"
    for test, kind in _NOT_FILES:
        if test(member):
            raise ShardReadError(f"{where} is a {kind}, not a regular file (avf shards hold regular files only)")
    if not member.isfile():
        return False
    limit = member_limit(member.name)
    if member.size > limit:
        raise ShardReadError(
            f"{where} claims {member.size} bytes, more than the {limit // 2**20} MiB any such member of a "
            "sample may hold; refused without reading it"
        )
    if file_size is not None and member.offset_data + member.size > file_size:
        left = max(0, file_size - member.offset_data)
        raise ShardReadError(f"{where} claims {member.size} bytes but the file ends {left} bytes into it (truncated)")
    return True


def tar_end(data_bytes: int) -> bytes:
    """The end-of-archive marker after ``data_bytes`` of members: two zero blocks, padded to a
    whole record."""
    end = data_bytes + 2 * BLOCK
    return bytes(2 * BLOCK + (-end % RECORD))


def member_bytes(name: str, data: bytes) -> bytes:
    """One tar member (header + data + padding) with fixed metadata."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    return header + data + bytes(-len(data) % BLOCK)


def sample_bytes(record: dict[str, Any]) -> bytes:
    """A sample (``{"__key__": key, ext: bytes | str, ...}``) as consecutive tar members,
    extensions in sorted order."""
    key = record["__key__"]
    parts = []
    for ext in sorted(k for k in record if not k.startswith("__")):
        data = record[ext]
        parts.append(member_bytes(f"{key}.{ext}", data.encode() if isinstance(data, str) else bytes(data)))
    return b"".join(parts)


@dataclass
class ShardIndex:
    """What a reader needs to know about a shard without reading it (see module doc)."""

    samples: int
    bytes: int
    offsets: list[int] | None = None  # format 1 indexes have none
    data_bytes: int | None = None
    extensions: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    labels: dict[str, int] = field(default_factory=dict)
    shard: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "shard": self.shard,
            "samples": self.samples,
            "bytes": self.bytes,
            "offsets": self.offsets or [],
            "data_bytes": self.data_bytes,
            "extensions": dict(sorted(self.extensions.items())),
            "seconds": round(self.seconds, 3),
            "labels": dict(sorted(self.labels.items(), key=lambda kv: (len(kv[0]), kv[0]))),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardIndex:
        offsets = data.get("offsets")
        return cls(
            samples=int(data["samples"]),
            bytes=int(data["bytes"]),
            offsets=[int(o) for o in offsets] if offsets else None,
            data_bytes=None if data.get("data_bytes") is None else int(data["data_bytes"]),
            extensions={str(k): int(v) for k, v in (data.get("extensions") or {}).items()},
            seconds=float(data.get("seconds") or 0.0),
            labels={str(k): int(v) for k, v in (data.get("labels") or {}).items()},
            shard=str(data.get("shard", "")),
        )

    def span(self, i: int) -> tuple[int, int]:
        """Byte range of sample ``i`` (needs offsets)."""
        assert self.offsets is not None and self.data_bytes is not None
        end = self.offsets[i + 1] if i + 1 < len(self.offsets) else self.data_bytes
        return self.offsets[i], end


def index_path(shard: str | os.PathLike) -> Path:
    """``a/shard-000001.tar`` -> ``a/shard-000001.idx.json``."""
    path = Path(shard)
    if not path.name.endswith(".tar"):
        raise ValueError(f"shard name {os.fspath(shard)!r} does not end in .tar")
    return path.with_name(path.name[: -len(".tar")] + INDEX_SUFFIX)


def write_index(shard: str | os.PathLike, index: ShardIndex) -> Path:
    """Write ``index`` next to local shard ``shard`` atomically (tmp + rename)."""
    target = index_path(shard)
    index.shard = target.name[: -len(INDEX_SUFFIX)] + ".tar"
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(index.to_json(), separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, target)
    return target


def read_local_index(shard: str | os.PathLike, *, check_size: bool = True) -> ShardIndex | None:
    """The index of a local shard, or None when it is missing, unreadable or stale (its
    ``bytes`` is not the shard's size: rewritten since)."""
    try:
        path = index_path(shard)
        if path.stat().st_size > MAX_INDEX_BYTES:  # not one we wrote: count from the tar instead
            return None
        index = ShardIndex.from_json(json.loads(path.read_bytes()))
        if check_size and os.path.getsize(shard) != index.bytes:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return index


class IndexBuilder:
    """Collects a shard's index while its samples are written (or copied) in order."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.extensions: Counter[str] = Counter()
        self.seconds = 0.0
        self.labels: Counter[str] = Counter()

    def add(self, offset: int, exts: Iterable[str], meta: dict[str, Any] | None = None) -> None:
        """A sample starting at ``offset`` with members ``exts``; ``meta`` (its json, or its
        manifest row) gives its seconds and label."""
        self.offsets.append(int(offset))
        self.extensions.update(exts)
        if meta:
            try:
                self.seconds += float(meta.get("end", 0.0)) - float(meta.get("start", 0.0))
            except (TypeError, ValueError):
                pass
            if meta.get("label") is not None:
                self.labels[str(meta["label"])] += 1

    def build(self, data_bytes: int, file_bytes: int) -> ShardIndex:
        return ShardIndex(
            samples=len(self.offsets),
            bytes=file_bytes,
            offsets=list(self.offsets),
            data_bytes=data_bytes,
            extensions=dict(self.extensions),
            seconds=self.seconds,
            labels=dict(self.labels),
        )

    def to_state(self) -> dict[str, Any]:
        return {
            "offsets": self.offsets,
            "extensions": dict(self.extensions),
            "seconds": self.seconds,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> IndexBuilder:
        b = cls()
        b.offsets = [int(o) for o in state.get("offsets", [])]
        b.extensions = Counter({k: int(v) for k, v in state.get("extensions", {}).items()})
        b.seconds = float(state.get("seconds", 0.0))
        b.labels = Counter({k: int(v) for k, v in state.get("labels", {}).items()})
        return b


class SampleTarWriter:
    """Appends samples to an open binary file as tar members and indexes them.

    ``fh`` must be positioned where the next sample goes (``start``: that position). Call
    :meth:`finish` to write the end-of-archive marker; :attr:`position` is where the members end.
    """

    def __init__(self, fh: IO[bytes], start: int = 0) -> None:
        self.fh = fh
        self.position = start
        self.index = IndexBuilder()

    def write(self, record: dict[str, Any]) -> int:
        """Add one sample; returns its offset."""
        if "." in record["__key__"]:
            raise ValueError(f"sample key {record['__key__']!r} must not contain '.' (WebDataset splits on it)")
        data = sample_bytes(record)
        offset = self.position
        self.fh.write(data)
        self.position += len(data)
        meta = None
        if "json" in record:
            try:
                meta = json.loads(record["json"])
            except (ValueError, TypeError):
                meta = None
        self.index.add(offset, (k for k in record if not k.startswith("__")), meta if isinstance(meta, dict) else None)
        return offset

    def finish(self) -> int:
        """Write the end-of-archive marker; returns the file's size."""
        self.fh.write(tar_end(self.position))
        return self.position + len(tar_end(self.position))


def write_tar(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> ShardIndex:
    """Write ``records`` to a new tar at ``path`` (fsynced); returns its index (not written)."""
    with open(path, "wb") as fh:
        writer = SampleTarWriter(fh)
        for record in records:
            writer.write(record)
        size = writer.finish()
        fh.flush()
        os.fsync(fh.fileno())
    return writer.index.build(writer.position, size)


def parse_sample(buf: bytes, where: str = "") -> dict[str, Any]:
    """The members of one sample read from ``buf`` (its byte range in a shard)."""
    sample: dict[str, Any] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(buf), mode="r:") as tar:
            for member in tar:
                if not check_member(member, where, len(buf)):
                    continue
                key, _, ext = os.path.basename(member.name).partition(".")
                sample.setdefault("__key__", key)
                handle = tar.extractfile(member)
                sample[ext] = handle.read() if handle is not None else b""
    except tarfile.TarError as exc:
        raise ShardReadError(f"cannot read sample at {where}: {exc}") from None
    return sample


def read_sample_at(path: str | os.PathLike, index: ShardIndex, i: int) -> dict[str, Any]:
    """Sample ``i`` of local shard ``path``, read with one seek (needs an index with offsets)."""
    lo, hi = index.span(i)
    with open(path, "rb") as fh:
        fh.seek(lo)
        buf = fh.read(hi - lo)
    return parse_sample(buf, f"{os.fspath(path)}#{i}")


def iter_samples_from(path: str | os.PathLike, index: ShardIndex, start: int) -> Iterator[dict[str, Any]]:
    """Samples ``start, start+1, ...`` of local shard ``path``, read in order after one seek."""
    if index.offsets is None or start >= index.samples:
        return
    with open(path, "rb") as fh:
        fh.seek(index.offsets[start])
        for i in range(start, index.samples):
            lo, hi = index.span(i)
            yield parse_sample(fh.read(hi - lo), f"{os.fspath(path)}#{i}")


def copy_range(src: IO[bytes], dst: IO[bytes], offset: int, length: int) -> None:
    """Copy ``length`` bytes at ``offset`` of ``src`` to ``dst``'s position, in the kernel where
    the OS allows it (``copy_file_range``: no trip through Python, a server-side copy on NFS 4.2)."""
    src.flush()
    dst.flush()
    start = dst.tell()
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < length:
                n = os.copy_file_range(src.fileno(), dst.fileno(), length - done, offset + done)
                if n == 0:
                    break
                done += n
            dst.seek(0, os.SEEK_END)
        except OSError:  # not supported across these file systems: plain reads below
            done = 0
            dst.seek(start)
            dst.truncate()
    if done < length:
        src.seek(offset + done)
        left = length - done
        while left:
            block = src.read(min(left, 1 << 22))
            if not block:
                raise OSError(f"unexpected end of {getattr(src, 'name', 'file')} at {offset + length - left}")
            dst.write(block)
            left -= len(block)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make renames in ``folder`` durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
