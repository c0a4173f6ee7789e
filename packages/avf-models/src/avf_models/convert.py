"""Official AVF-MAE++ checkpoints <-> this package.

Our module names equal the official ones except two groupings that make the IAV-CL components
separate classes:

* ``encoder_fusion.Iterative_Refinement_Module.*`` -> ``encoder_fusion.er.*`` (``ERLayer``)
* the HAFE tensors that sit directly on the official fusion module (``encoder_fusion.norm``,
  ``vadaptiveinteraction``, ``cross_attn``, ...) -> ``encoder_fusion.hafe.*`` (``HAFELayer``)

Everything else maps one-to-one, including BatchNorm buffers.  Sinusoidal position tables are not
state-dict entries on either side.  Loading is always ``torch.load(..., weights_only=True)`` with
``argparse.Namespace`` allow-listed for the ``args`` entry of the official container.
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .config import CONFIGS, ModelConfig

HAFE_NAMES: frozenset[str] = frozenset(
    {
        "norm",
        "norm_audio",
        "vadaptiveinteraction",
        "aadaptiveinteraction",
        "vselectfusion",
        "aselectfusion",
        "norm_att_v",
        "mlp_att_v",
        "norm_att_a",
        "mlp_att_a",
        "cross_attn",
        "cross_norm_1",
        "cross_norm_2",
        "cross_norm_3",
        "norm_att_v_IR",
        "norm_att_a_IR",
        "mlp_att_video_IR",
        "mlp_att_audio_IR",
    }
)
_OFFICIAL_ER = "encoder_fusion.Iterative_Refinement_Module."
_STRIP_PREFIXES = ("module.", "_orig_mod.")
# HiCMAE's fine-tuning model spells these differently from AVF-MAE++.
_RENAMES = {"video_layer_weights": "layer_weights_video", "audio_layer_weights": "layer_weights_audio"}


class CheckpointMismatchError(ValueError):
    """Raised when a state dict does not fill a model exactly; the message lists every offending key."""


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _STRIP_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def _is_iavcl(keys: list[str]) -> bool:
    return any(
        k.startswith(
            (_OFFICIAL_ER, "encoder_fusion.er.", "encoder_fusion.hafe.", "encoder_fusion.vadaptiveinteraction")
        )
        for k in keys
    )


def official_to_ours_key(key: str, iavcl: bool = True) -> str:
    """Map one official key to our name (idempotent on our own names)."""
    key = _strip(key)
    key = _RENAMES.get(key, key)
    if not iavcl:
        return key
    if key.startswith(_OFFICIAL_ER):
        return "encoder_fusion.er." + key[len(_OFFICIAL_ER) :]
    m = re.match(r"encoder_fusion\.([^.]+)\.(.+)$", key)
    if m and m.group(1) in HAFE_NAMES:
        return f"encoder_fusion.hafe.{m.group(1)}.{m.group(2)}"
    return key


def ours_to_official_key(key: str) -> str:
    """Inverse of ``official_to_ours_key`` for IAV-CL models (used to export / test round trips)."""
    if key.startswith("encoder_fusion.er."):
        return _OFFICIAL_ER + key[len("encoder_fusion.er.") :]
    if key.startswith("encoder_fusion.hafe."):
        return "encoder_fusion." + key[len("encoder_fusion.hafe.") :]
    return key


def convert_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official (or DDP/compiled-prefixed) state dict to our key names; tensors are shared."""
    keys = [_strip(k) for k in state_dict]
    iavcl = _is_iavcl(keys)
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        nk = official_to_ours_key(k, iavcl)
        if nk in out:
            raise CheckpointMismatchError(f"two checkpoint keys map to {nk!r}")
        out[nk] = v
    return out


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint safely -> (state_dict, container).

    Accepts the official container (``{'model': ..., 'args': Namespace, ...}``), one with ``'module'``
    or ``'state_dict'``, our converted files, or a bare state dict.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(Check the documentation|$)", str(e), re.S)
        raise ValueError(
            f"{path}: not loaded with weights_only=True: it is not a torch checkpoint, or it holds Python objects "
            "other than tensors, containers and argparse.Namespace "
            f"({' '.join(reason.group(1).split()) if reason else e})"
        ) from e
    except (RuntimeError, EOFError) as e:  # not a torch file, or a truncated one
        raise ValueError(f"{path}: not a torch checkpoint, or truncated ({str(e).strip().splitlines()[0]})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    for key in ("model", "module", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key], obj
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise ValueError(f"{path}: no 'model'/'module'/'state_dict' entry; top-level keys: {sorted(obj)}")


def _count_blocks(keys: list[str], prefix: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def infer_config(state_dict: dict[str, torch.Tensor], args: object | None = None) -> tuple[ModelConfig, str]:
    """Work out (config, stage) from tensor shapes; skip indices come from ``args`` when present,
    otherwise from the named config with the same width."""
    sd = convert_official_state_dict(state_dict)
    keys = list(sd)
    if "encoder.patch_embed.proj.weight" not in sd:
        raise CheckpointMismatchError("not an AVF-MAE++/HiCMAE checkpoint: no encoder.patch_embed.proj.weight")
    dim = sd["encoder.patch_embed.proj.weight"].shape[0]
    lgi = "encoder.lg_region_tokens" in sd
    stage = "pretrain" if any(k.startswith("decoder.") for k in keys) else "finetune"
    if not lgi:
        if stage == "finetune":
            raise CheckpointMismatchError("HiCMAE fine-tuning checkpoints are not supported")
        base = CONFIGS["hicmae_base"]
    else:
        matches = [c for n, c in CONFIGS.items() if c.embed_dim == dim and n.startswith("avfmae")]
        if not matches:
            raise CheckpointMismatchError(f"no AVF-MAE++ config has width {dim}")
        base = matches[0]
    over: dict[str, object] = dict(
        depth=_count_blocks(keys, "encoder.blocks."),
        depth_audio=_count_blocks(keys, "encoder_audio.blocks."),
        fusion_depth=_count_blocks(keys, "encoder_fusion.blocks."),
    )
    if stage == "pretrain":
        over["decoder_embed_dim"] = sd["mask_token"].shape[-1]
        over["decoder_depth"] = _count_blocks(keys, "decoder.blocks.")
        skips = getattr(args, "return_intermediate_features", None) if args is not None else None
        if skips:
            over["skip_layers"] = tuple(int(i) for i in skips)
        elif over["decoder_depth"] != base.decoder_depth or over["depth"] != base.depth:
            raise CheckpointMismatchError(
                "cannot infer skip_layers; checkpoint has no args.return_intermediate_features"
            )
    else:
        over["drop_path_rate"] = 0.1
        over["num_classes"] = sd["head.weight"].shape[0] if "head.weight" in sd else 0
        d = over["depth"]
        over["skip_layers"] = tuple(i for i in base.skip_layers if i < d) or (d - 1,)
        over["decoder_depth"] = len(over["skip_layers"]) + 1
    return dataclasses.replace(base, **over).validate(), stage


def build_for(config: ModelConfig, stage: str, device: str | torch.device = "meta") -> nn.Module:
    from .finetune import AVFMAEFinetune
    from .pretrain import AVFMAEPretrain

    with torch.device(device):
        return AVFMAEPretrain(config) if stage == "pretrain" else AVFMAEFinetune(config)


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Strict comparison of names and shapes; raises CheckpointMismatchError listing every problem."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {expected[k]}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != expected[k]
    )
    if missing or unexpected or shapes:
        parts = [
            f"{len(items)} {title} key(s): {', '.join(items)}"
            for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
            if items
        ]
        raise CheckpointMismatchError("state dict does not match the model: " + "; ".join(parts))


def convert_checkpoint(src: str | Path, dst: str | Path) -> ModelConfig:
    """Convert an official .pth into ``{'model': state_dict, 'model_name': str, 'config': dict, 'stage': str}``
    at ``dst`` (``model_name`` is the registry name of its size, which avf-train's ``--init`` builds).

    Strict: every official key must map to a model key and every model key must be filled, with equal
    shapes.  The output loads with ``torch.load(dst, weights_only=True)``.
    """
    sd, container = load_checkpoint(src)
    cfg, stage = infer_config(sd, container.get("args"))
    ours = convert_official_state_dict(sd)
    check_state_dict(build_for(cfg, stage), ours)
    cfg_dict = dataclasses.asdict(cfg)
    torch.save({"model": ours, "model_name": cfg.name, "config": cfg_dict, "stage": stage, "source": str(src)}, dst)
    return cfg


@dataclass
class LoadReport:
    """What ``load_pretrained_into_finetune`` did: keys loaded, model keys left at init, keys ignored."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


_BACKBONE = ("encoder.", "encoder_audio.", "encoder_fusion.")
_HEAD_KEYS = ("layer_weights_video", "layer_weights_audio", "fc_norm.", "head.")


def load_pretrained_into_finetune(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Load a pre-training state dict (official names, ours, or a container with 'model') into a
    fine-tuning model.

    Backbone keys (``encoder.*``, ``encoder_audio.*``, ``encoder_fusion.*``) map one-to-one; every
    backbone key the model has must be present with the same shape, otherwise CheckpointMismatchError.
    Decoder keys, mask tokens and encoder_to_decoder are ignored; ``layer_weights_*``, ``fc_norm`` and
    ``head`` stay at their init (a matching ``head`` is loaded, a different-shaped one is dropped).
    """
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    sd = convert_official_state_dict(state_dict)
    own = model.state_dict()
    report = LoadReport()
    to_load: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k in own and (k.startswith(_BACKBONE) or k.startswith(_HEAD_KEYS)) and tuple(v.shape) == tuple(own[k].shape):
            to_load[k] = v
        elif k in own and k.startswith(_BACKBONE):
            raise CheckpointMismatchError(f"{k}: checkpoint shape {tuple(v.shape)} vs model {tuple(own[k].shape)}")
        else:
            report.ignored.append(k)
    missing_backbone = sorted(k for k in own if k.startswith(_BACKBONE) and k not in to_load)
    if missing_backbone:
        raise CheckpointMismatchError(
            f"{len(missing_backbone)} backbone key(s) missing from the checkpoint:\n  " + "\n  ".join(missing_backbone)
        )
    # a meta-device model (used to check keys without memory) takes the tensors by assignment
    model.load_state_dict(to_load, strict=False, assign=any(p.is_meta for p in model.parameters()))
    report.loaded = sorted(to_load)
    report.missing = sorted(k for k in own if k not in to_load)
    return report


def load_model(
    path: str | Path, stage: str | None = None, map_location: str | torch.device = "cpu", **overrides: object
) -> nn.Module:
    """Build a model from a checkpoint file and load it strictly.

    Works for files written by ``convert_checkpoint`` (config stored inside) and for official
    checkpoints (converted in memory).  ``stage="finetune"`` on a pre-training file builds a fine-tuning
    model and loads the backbone with ``load_pretrained_into_finetune``; then pass e.g.
    ``num_classes=7``.  Other ``overrides`` are ModelConfig fields (drop_path_rate, modality, ...).
    """
    from .finetune import AVFMAEFinetune
    from .pretrain import AVFMAEPretrain

    sd, container = load_checkpoint(path)
    sd = convert_official_state_dict(sd)
    if isinstance(container.get("config"), dict):
        stored = dict(container["config"])
        for k in ("region_size", "region_size_audio", "skip_layers"):
            stored[k] = tuple(stored[k])
        cfg, file_stage = ModelConfig(**stored), container.get("stage", "pretrain")
    else:
        cfg, file_stage = infer_config(sd, container.get("args"))
    stage = stage or file_stage
    if stage == "finetune" and file_stage == "pretrain":
        overrides.setdefault("drop_path_rate", 0.1)
        model = AVFMAEFinetune(dataclasses.replace(cfg, **overrides).validate())
        load_pretrained_into_finetune(model, sd)
        return model.to(map_location)
    cfg = dataclasses.replace(cfg, **overrides).validate()
    model = AVFMAEPretrain(cfg) if stage == "pretrain" else AVFMAEFinetune(cfg)
    check_state_dict(model, sd)
    model.load_state_dict(sd)
    return model.to(map_location)
