"""The user errors of avf-train, and how they reach the console as one line.

Every expected failure is a :class:`StageError` (wrong data, wrong checkpoint, a config that
cannot work for the stage), avf-data's ``ConfigError`` (a wrong config key, value or file), or a
``FileNotFoundError``/``FileExistsError`` (shards, checkpoints, an ``--out`` that holds a run);
the CLI prints it as ``avf-train: error: ...`` and exits with status 2. Errors raised inside a
DataLoader worker come back from torch wrapped in a multi-line "Caught ... in DataLoader worker
process" text with the worker's traceback; :func:`one_line` digs the original message out so the
user still sees one line.
"""

from __future__ import annotations


class StageError(ValueError):
    """A checkpoint from the wrong stage, or data or a config that cannot work for this stage."""


class DataError(StageError):
    """The shards cannot feed this run (unlabelled, a label outside the label map, too few clips...)."""


def one_line(exc: BaseException) -> str:
    """The message a user needs: for a re-raised DataLoader worker error, the original last line."""
    # args[0] is the message as raised (a KeyError's str() would quote it); OSErrors raised by the
    # system carry (errno, strerror) and read best as str()
    text = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1].strip()
        head, sep, rest = last.partition(": ")
        text = rest if sep and (head.endswith("Error") or head.endswith("Exception")) else last
    return " ".join(text.split("\n")[0].split()) if text else type(exc).__name__
