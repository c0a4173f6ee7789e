"""Checkpoints that load with ``torch.load(..., weights_only=True)``.

Layout of a run folder::

    RUN/config.yaml                    resolved config
    RUN/checkpoints/step-00001000.pt   one file per save, the last ``keep_last`` are kept
    RUN/checkpoint                     the latest checkpoint (a copy-free relative symlink)
    RUN/metrics.jsonl, RUN/tb/         metrics

Each file is a dict of tensors and plain Python types only: ``format`` (int), ``stage``,
``model_name``, ``model`` (state_dict), ``optimizer``, ``scheduler``, ``scaler``, ``step``,
``epoch``, ``rng`` (torch/cuda ByteTensors, numpy and python states as tensors/lists), ``data``
(the loader's StreamState as a dict) and ``config`` (the nested config dict). Nothing needs
unpickling of arbitrary classes, so ``weights_only=True`` always works.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .distributed import unwrap
from .errors import StageError

FORMAT = 1


def rng_state() -> dict[str, Any]:
    """All RNG states as weights_only-safe values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {
            "version": int(version),
            "internal": [int(v) for v in internal],
            "gauss": None if py_gauss is None else float(py_gauss),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, ``RUN/checkpoint`` or a run folder -> the checkpoint file to read.

    A folder may also be the ``--out`` of ``avf-models convert`` (``DIR/checkpoint.pt``).
    """
    p = Path(path)
    if p.is_dir():
        for candidate in (p / "checkpoint", p / "checkpoint.pt", p / "checkpoints" / "latest.pt"):
            if candidate.exists():
                return candidate.resolve()
        ckpts = sorted((p / "checkpoints").glob("step-*.pt")) if (p / "checkpoints").is_dir() else []
        if ckpts:
            return ckpts[-1]
        raise FileNotFoundError(f"no checkpoint in run folder {p} (expected {p}/checkpoint)")
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    return p.resolve()


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint (file, ``RUN/checkpoint`` or run folder) with ``weights_only=True``.

    A file torch cannot read (truncated by a full disk, not a torch file, pickling arbitrary
    Python objects) raises :class:`StageError` naming the file, not torch's multi-line traceback.
    """
    file = resolve(path)
    try:
        ckpt = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Weights only load failed" in str(exc):
            raise StageError(
                f"cannot read checkpoint {file}: not a weights-only torch checkpoint (it pickles "
                "Python objects; re-save its tensors, e.g. with `avf-models convert`)"
            ) from None
        raise StageError(f"cannot read checkpoint {file}: not a torch checkpoint or corrupt ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StageError(
            f"cannot read checkpoint {file}: truncated or corrupt ({type(exc).__name__}: {first})"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        # a bare state_dict (e.g. converted official weights): wrap it so callers see one shape
        return {"format": 0, "stage": "unknown", "model": ckpt, "path": str(file)}
    ckpt["path"] = str(file)
    return ckpt


def save(run_dir: str | os.PathLike, step: int, payload: dict[str, Any], keep_last: int = 3) -> Path:
    """Write ``checkpoints/step-NNNNNNNN.pt`` atomically, repoint ``RUN/checkpoint``, prune old ones."""
    run_dir = Path(run_dir)
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{step:08d}.pt"
    tmp = target.with_suffix(".pt.tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, target)
    link = run_dir / "checkpoint"
    tmp_link = run_dir / ".checkpoint.tmp"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    os.symlink(os.path.relpath(target, run_dir), tmp_link)
    os.replace(tmp_link, link)
    if keep_last > 0:
        for old in sorted(folder.glob("step-*.pt"))[:-keep_last]:
            old.unlink()
    return target


# --------------------------------------------------------------------------- a training run's state


def _state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state; FSDP2 gathers it to the CPU."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)
    return unwrap(model).state_dict(), optimizer.state_dict()


def load_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt: dict, fsdp: bool) -> None:
    """Model and optimizer of a resumed run (every rank loads the full state; FSDP2 shards it)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        set_model_state_dict(model, ckpt["model"], options=opts)
        set_optimizer_state_dict(model, optimizer, ckpt["optimizer"], options=opts)
        return
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])


def save_training_state(
    run_dir: Path, payload: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    fsdp: bool, rank_states: dict[str, list[Any]], is_main: bool, keep_last: int,
) -> Path | None:  # fmt: skip
    """Collective: every rank hands in its state dicts (FSDP2 gathers them); rank 0 writes
    ``payload`` plus ``model``, ``optimizer`` and the per-rank ``rank_states`` (RNG, loader)."""
    model_sd, optim_sd = _state_dicts(model, optimizer, fsdp)
    if not is_main:
        return None
    return save(run_dir, int(payload["step"]), {**payload, "model": model_sd, "optimizer": optim_sd, **rank_states},
                keep_last=keep_last)  # fmt: skip
