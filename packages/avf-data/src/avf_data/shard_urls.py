"""Where shards live: the spellings WebDataset users pass, expanded and opened as byte streams.

A 1.36M-clip corpus is terabytes on object storage or a shared file system, so a shard is
named by any of:

* a local path, a folder (every ``*.tar`` below it), a glob (``shards/*.tar``) or ``file://``;
* a brace pattern (``shards/a-{000000..000099}.tar``, ``{train,val}``), on every kind below;
* an ``http://`` / ``https://`` URL (read with the standard library);
* ``pipe:COMMAND``, a shell command that writes the shard to stdout
  (``pipe:aws s3 cp s3://bucket/a-000000.tar -``); a non-zero exit status is an error;
* any other ``scheme://`` URL through fsspec when it is installed (``s3://``, ``gs://``, ...;
  globs are listed by the file system).

Why not ``webdataset.gopen``: it reads http(s) through a ``curl`` subprocess (not on every
machine) and cannot tell a failed command from a short shard. Everything here streams: a
shard is read once, front to back, and nothing is downloaded ahead.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import IO, Any

HTTP_TIMEOUT_S = 60.0
"""Socket timeout of http(s) reads: a stalled object store fails the read instead of hanging."""

_BRACE_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def kind(url: str) -> str:
    """``local``, ``http``, ``pipe`` or ``fsspec`` (``file://`` counts as local)."""
    if url.startswith("pipe:"):
        return "pipe"
    scheme, sep, _ = url.partition("://")
    if not sep or scheme == "file" or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return "local"
    return "http" if scheme in ("http", "https") else "fsspec"


def local_path(url: str) -> str:
    """The file system path of a ``local`` shard name (``file://`` stripped)."""
    return url[len("file://") :] if url.startswith("file://") else url


def split_list(spec: str) -> list[str]:
    """Split a comma-separated list of patterns, leaving commas inside ``{...}`` alone."""
    return [p.strip() for p in _top_level_split(spec) if p.strip()]


def expand_braces(pattern: str) -> list[str]:
    """WebDataset/bash brace expansion: ``{a,b}`` alternatives and ``{000..099}`` ranges (zero
    padding kept), nested, left to right. Text without a closed brace is returned unchanged."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth = 0
    for end in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[end], 0)
        if depth == 0:
            break
    else:
        return [pattern]
    head, body, tail = pattern[:start], pattern[start + 1 : end], pattern[end + 1 :]
    match = _BRACE_RANGE.match(body)
    if match:
        lo, hi = int(match.group(1)), int(match.group(2))
        width = len(match.group(1)) if match.group(1).lstrip("-").startswith("0") else 0
        step = 1 if hi >= lo else -1
        options = [f"{i:0{width}d}" for i in range(lo, hi + step, step)]
    else:
        options = [o for alt in _top_level_split(body) for o in expand_braces(alt)]
    return [head + o + rest for o in options for rest in expand_braces(tail)]


def _top_level_split(body: str) -> list[str]:
    """Split on the commas outside braces, keeping empty parts (``{,a}`` has two alternatives)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return parts


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def expand_urls(pattern: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Shard names for a pattern (or a list of them), sorted and without duplicates.

    Local folders and globs are listed (``*.tar`` files only); URLs and ``pipe:`` commands are
    taken as given after brace expansion, since an object store cannot be listed by a glob
    unless fsspec does it. Raises FileNotFoundError naming the pattern when nothing matches,
    because an empty training set is always a mistake worth stopping for.
    """
    if not isinstance(pattern, (str, os.PathLike)):
        items = [os.fspath(p) for p in pattern]
        found = sorted({u for item in items for u in expand_urls(item)})
        if not found:
            raise FileNotFoundError(f"no shards (*.tar) found for {items!r}")
        return found
    text = os.fspath(pattern)
    found: set[str] = set()
    for item in expand_braces(text):
        where = kind(item)
        if where == "local":
            path = local_path(item)
            if os.path.isdir(path):
                found.update(glob.glob(os.path.join(path, "**", "*.tar"), recursive=True))
            else:
                found.update(p for p in glob.glob(path) if p.endswith(".tar"))
        elif where == "fsspec" and _has_glob(item):
            fs, _, paths = _fsspec().get_fs_token_paths(item)
            found.update(fs.unstrip_protocol(p) for p in paths if p.endswith(".tar"))
        else:
            found.add(item)
    if not found:
        raise FileNotFoundError(f"no shards (*.tar) found for {text!r}")
    return sorted(found)


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError:
        raise OSError(
            "reading scheme:// shard URLs other than http(s) needs fsspec (pip install fsspec "
            "and the file system's package, e.g. s3fs)"
        ) from None
    return fsspec


class PipeReader:
    """stdout of a ``pipe:`` command as a readable stream.

    ``finish()`` (the reader got to the end) drains the rest and raises if the command failed,
    so a failed download is never mistaken for a short shard; ``close()`` before that kills
    the command (a consumer that stops early must not wait for a download to end).
    """

    def __init__(self, command: str) -> None:
        self.command = command
        # stderr to a file, not a pipe: a chatty command (progress bars) must not block on a
        # full stderr pipe while this side reads stdout
        self._err = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            command, shell=True, stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL
        )
        assert self._proc.stdout is not None
        self._out = self._proc.stdout

    def read(self, size: int = -1) -> bytes:
        return self._out.read(size)

    def finish(self) -> None:
        while self._out.read(1 << 16):
            pass
        code = self._proc.wait()
        self._err.seek(0)
        err = self._err.read().decode(errors="replace").strip().splitlines()
        self.close()
        if code != 0:
            raise OSError(f"pipe:{self.command} exited with status {code}" + (f": {err[-1]}" if err else ""))

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._out.close()
        self._err.close()

    def __enter__(self) -> PipeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_url(url: str) -> IO[bytes] | PipeReader:
    """Open one shard name for streaming reads (``read(n)``; close it when done).

    Errors name the shard: FileNotFoundError for a missing local file or an http 404, OSError
    otherwise.
    """
    where = kind(url)
    if where == "local":
        return open(local_path(url), "rb")
    if where == "pipe":
        return PipeReader(url[len("pipe:") :])
    if where == "http":
        try:
            return urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S)  # noqa: S310 - the user's own URL
        except urllib.error.HTTPError as exc:
            cls = FileNotFoundError if exc.code == 404 else OSError
            raise cls(f"cannot read {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise OSError(f"cannot read {url}: {getattr(exc, 'reason', exc)}") from None
    try:
        return _fsspec().open(url, "rb").open()
    except FileNotFoundError:
        raise FileNotFoundError(f"cannot read {url}: not found") from None


def read_small(url: str) -> bytes | None:
    """The whole content of a small object (an index next to a shard), or None if it is absent
    or unreadable: callers fall back to other sources instead of failing."""
    try:
        handle = open_url(url)
    except (OSError, ValueError):
        return None
    try:
        data = handle.read()
        if isinstance(handle, PipeReader):
            handle.finish()
        return data
    except (OSError, ValueError):
        return None
    finally:
        handle.close()


def sibling(url: str, old_suffix: str, new_suffix: str) -> str | None:
    """The name of a file next to a shard: the last ``old_suffix`` (ending a word) replaced.

    Works for paths and URLs, and for ``pipe:`` commands that name the shard once
    (``pipe:aws s3 cp s3://b/a-000000.tar -`` -> ``... s3://b/a-000000.idx.json -``).
    """
    matches = list(re.finditer(re.escape(old_suffix) + r"(?=$|[\s'\"?#&;|)])", url))
    if not matches:
        return None
    m = matches[-1]
    return url[: m.start()] + new_suffix + url[m.end() :]
