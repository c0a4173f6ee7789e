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
import warnings
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


# torch.save's legacy (pre-1.6, non-zip) format starts with this pickled magic number (protocol 2)
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:12]


def _torch_file(path: str | Path) -> bool:
    """Whether ``path`` starts like a file torch.save wrote (zip archive or the legacy format), so that
    a plain pickle is named as such instead of by the unpickler's opcode complaint."""
    with open(path, "rb") as fh:
        head = fh.read(len(_LEGACY_MAGIC))
    return head.startswith(b"PK\x03\x04") or head == _LEGACY_MAGIC


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint safely -> (state_dict, container).

    Accepts the official container (``{'model': ..., 'args': Namespace, ...}``), one with ``'module'``
    or ``'state_dict'``, our converted files, or a bare state dict.
    """
    try:
        # torch warns (two lines on stderr) about the protocol of a plain pickle before refusing it
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        if not _torch_file(path):
            raise ValueError(
                f"{path}: not a torch checkpoint (a plain pickle or another format; torch.save writes a zip "
                "archive): re-save it with torch.save, or give the released .pth"
            ) from e
        if not isinstance(e, pickle.UnpicklingError):  # a torch file that is truncated or corrupt
            raise ValueError(f"{path}: not a torch checkpoint, or truncated ({str(e).strip().splitlines()[0]})") from e
        reason = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(Check the documentation|$)", str(e), re.S)
        raise ValueError(
            f"{path}: not loaded with weights_only=True: it is not a torch checkpoint, or it holds Python objects "
            "other than tensors, containers and argparse.Namespace "
            f"({' '.join(reason.group(1).split()) if reason else e})"
        ) from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    for key in ("model", "module", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            odd = [k for k, v in obj[key].items() if not isinstance(v, torch.Tensor)]
            if odd:  # later steps read shapes: say which entry is not a tensor instead of crashing there
                raise ValueError(
                    f"{path}: '{key}' is not a state dict: {odd[0]!r} is a {type(obj[key][odd[0]]).__name__}"
                )
            return obj[key], obj
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise ValueError(f"{path}: no 'model'/'module'/'state_dict' entry; top-level keys: {sorted(obj)}")


def _count_blocks(keys: list[str], prefix: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _base_and_stage(sd: dict[str, torch.Tensor]) -> tuple[ModelConfig, str]:
    """The named config whose width the tensors have, and whether the dict has a decoder (pre-training)."""
    if "encoder.patch_embed.proj.weight" not in sd:
        raise CheckpointMismatchError("not an AVF-MAE++/HiCMAE checkpoint: no encoder.patch_embed.proj.weight")
    dim = sd["encoder.patch_embed.proj.weight"].shape[0]
    stage = "pretrain" if any(k.startswith("decoder.") for k in sd) else "finetune"
    if "encoder.lg_region_tokens" not in sd:
        if stage == "finetune":
            raise CheckpointMismatchError("HiCMAE fine-tuning checkpoints are not supported")
        return CONFIGS["hicmae_base"], stage
    matches = [c for n, c in CONFIGS.items() if c.embed_dim == dim and n.startswith("avfmae")]
    if not matches:
        raise CheckpointMismatchError(f"no AVF-MAE++ config has width {dim}")
    return matches[0], stage


def _from_tensors(sd: dict[str, torch.Tensor], base: ModelConfig, stage: str) -> dict[str, object]:
    """The ModelConfig values the tensors decide (a user-given value must agree with them)."""
    keys = list(sd)
    out: dict[str, object] = dict(
        name=base.name,
        embed_dim=base.embed_dim,
        depth=_count_blocks(keys, "encoder.blocks."),
        depth_audio=_count_blocks(keys, "encoder_audio.blocks."),
        fusion_depth=_count_blocks(keys, "encoder_fusion.blocks."),
    )
    if stage == "pretrain":
        out["decoder_embed_dim"] = sd["mask_token"].shape[-1]
        out["decoder_depth"] = _count_blocks(keys, "decoder.blocks.")
    else:
        out["num_classes"] = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    return out


def _skip_layers(base: ModelConfig, over: dict, stage: str, given: object, args: object | None) -> tuple[int, ...]:
    """Skip-connection layers: the user's, else the checkpoint's args, else the named config's.  They
    leave no trace in the tensors except their count (one decoder block each, plus block 0), so that
    count and the encoder depth are all they can be checked against."""
    from_args = getattr(args, "return_intermediate_features", None) if args is not None else None
    from_args = tuple(int(i) for i in from_args) if from_args else None
    skips = tuple(int(i) for i in given) if isinstance(given, (tuple, list)) else from_args
    if given is not None and from_args and skips != from_args:
        raise CheckpointMismatchError(
            f"skip_layers={list(skips or ())} contradicts the checkpoint's "
            f"args.return_intermediate_features {list(from_args)}"
        )
    depth, decoder_depth = int(over["depth"]), int(over.get("decoder_depth", 0))
    if stage == "pretrain" and skips is None:
        if decoder_depth != base.decoder_depth or depth != base.depth:
            raise CheckpointMismatchError(
                f"cannot infer skip_layers: the checkpoint has no args.return_intermediate_features and its "
                f"depth {depth} / decoder depth {decoder_depth} differ from {base.name}'s {base.depth} / "
                f"{base.decoder_depth}; give {decoder_depth - 1} encoder layer indices below {depth} "
                "(avf-models convert --set model.skip_layers=I,J,...)"
            )
        skips = base.skip_layers
    if skips is None:  # fine-tuning: not in the tensors and not used by the model
        skips = tuple(i for i in base.skip_layers if i < depth) or (depth - 1,)
    if stage == "pretrain" and len(skips) + 1 != decoder_depth:
        raise CheckpointMismatchError(
            f"skip_layers={list(skips)} means {len(skips) + 1} decoder blocks; the checkpoint has {decoder_depth}"
        )
    if not skips or max(skips) >= min(depth, int(over["depth_audio"])) or min(skips) < 0:
        raise CheckpointMismatchError(f"skip_layers={list(skips)}: each must be an encoder layer 0-{depth - 1}")
    return skips


def infer_config(
    state_dict: dict[str, torch.Tensor], args: object | None = None, overrides: dict[str, object] | None = None
) -> tuple[ModelConfig, str]:
    """Work out (config, stage) from tensor shapes.

    ``overrides`` (ModelConfig fields) are applied before inference, because a bare state dict of
    non-default depth does not say its skip layers; a value the tensors decide (depth, width,
    decoder depth, classes) must agree with them, so a wrong guess fails here with the reason rather
    than as a list of mismatched keys.  Skip indices come from ``overrides``, else ``args``, else
    the named config with the same width.
    """
    sd = convert_official_state_dict(state_dict)
    given = dict(overrides or {})
    base, stage = _base_and_stage(sd)
    derived = _from_tensors(sd, base, stage)
    for key, value in given.items():
        if key in derived and value != derived[key]:
            raise CheckpointMismatchError(
                f"{key}={value} contradicts the checkpoint, whose tensors give {derived[key]}"
            )
    over: dict = {**derived, **({"drop_path_rate": 0.1} if stage == "finetune" else {}), **given}
    over["skip_layers"] = _skip_layers(base, over, stage, given.get("skip_layers"), args)
    if stage == "finetune":
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


def convert_checkpoint(src: str | Path, dst: str | Path, overrides: dict[str, object] | None = None) -> ModelConfig:
    """Convert an official .pth into ``{'model': state_dict, 'model_name': str, 'config': dict, 'stage': str}``
    at ``dst`` (``model_name`` is the registry name of its size, which avf-train's ``--init`` builds).

    Strict: every official key must map to a model key and every model key must be filled, with equal
    shapes.  The output loads with ``torch.load(dst, weights_only=True)``.  ``overrides`` (ModelConfig
    fields, e.g. ``{"skip_layers": (1, 3)}``) supply what the tensors cannot say; see ``infer_config``.
    """
    sd, container = load_checkpoint(src)
    cfg, stage = infer_config(sd, container.get("args"), overrides)
    ours = convert_official_state_dict(sd)
    check_state_dict(build_for(cfg, stage), ours)
    cfg_dict = dataclasses.asdict(cfg)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)  # only now: a refused input leaves no folder behind
    torch.save({"model": ours, "model_name": cfg.name, "config": cfg_dict, "stage": stage, "source": str(src)}, dst)
    return cfg


_BACKBONE = ("encoder.", "encoder_audio.", "encoder_fusion.")
_HEAD_KEYS = ("layer_weights_video", "layer_weights_audio", "fc_norm.", "head.")
_DECODER_KEYS = ("decoder", "mask_token", "encoder_to_decoder")
# backbone parts (first name component) as the messages call them
_PARTS = {"encoder": "video encoder", "encoder_audio": "audio encoder", "encoder_fusion": "fusion"}


def _kind(key: str) -> str:
    """Which part of a network a (our-name) key belongs to: backbone, head, decoder or other."""
    if key.startswith(_BACKBONE):
        return "backbone"
    if key.startswith(_HEAD_KEYS):
        return "head"
    return "decoder" if key.startswith(_DECODER_KEYS) else "other"


def _count(keys: list[str], kind: str) -> int:
    return sum(_kind(k) == kind for k in keys)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass
class LoadReport:
    """What ``load_pretrained_into_finetune`` did, so a caller can tell a complete backbone from a partial one.

    ``loaded``: keys copied; ``missing``: model keys left at init; ``ignored``: every checkpoint key not
    copied.  Of the ignored ones, ``dropped`` are backbone tensors of a part the model has (only with
    ``allow_partial=True``) and ``unused`` backbone tensors of a part it has not (the audio encoder and
    fusion for a video-only model); ``problems`` describes the blocks in which the two backbones differ.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line counting backbone, decoder and head tensors apart, e.g. ``loaded 392 backbone
        tensors; skipped 130 decoder tensors (pre-training only), head new``."""
        segs = [f"loaded {_count(self.loaded, 'backbone')} backbone tensors"]
        if self.problems:
            segs.append("partial: " + "; ".join(self.problems))
        if self.dropped:
            segs.append(f"dropped {_plural(len(self.dropped), 'checkpoint backbone tensor')}")
        if _count(self.missing, "backbone"):
            segs.append(f"{_count(self.missing, 'backbone')} model backbone tensors left at random init")
        skipped = []
        if self.unused:
            parts = sorted({_PARTS[k.split(".")[0]] for k in self.unused})
            skipped.append(f"{len(self.unused)} {' and '.join(parts)} tensors (not in this model)")
        for kind, why in (
            ("decoder", "pre-training only"),
            ("head", "not matching the model's head"),
            ("other", "not in the model"),
        ):
            if _count(self.ignored, kind):
                skipped.append(f"{_count(self.ignored, kind)} {kind} tensors ({why})")
        if skipped:
            segs.append("skipped " + ", ".join(skipped))
        head_loaded, head_new = _count(self.loaded, "head"), _count(self.missing, "head")
        head = "head new" if not head_loaded else "head loaded" if not head_new else "head partly loaded"
        return "; ".join(segs) + ", " + head


class PartialInitError(CheckpointMismatchError):
    """The checkpoint's encoder/fusion blocks differ from the model's: loading would silently drop
    pre-trained tensors or leave backbone tensors at random init.  ``problems`` name the blocks;
    ``describe(hint)`` lets a caller word its own opt-in (avf-train: ``--allow-partial-init``)."""

    def __init__(self, problems: list[str], dropped: int, untouched: int) -> None:
        self.problems, self.dropped, self.untouched = problems, dropped, untouched
        super().__init__(self.describe("pass allow_partial=True to load only the tensors both have"))

    def describe(self, hint: str) -> str:
        """The one-line message: the blocks, what loading anyway would do, then ``hint``."""
        effects = []
        if self.dropped:
            effects.append(f"{_plural(self.dropped, 'pre-trained backbone tensor')} would be dropped")
        if self.untouched:
            effects.append(f"{_plural(self.untouched, 'model backbone tensor')} would stay at random init")
        return f"{'; '.join(self.problems)} ({', '.join(effects)}); {hint}"


def _block_ids(keys: set[str], part: str) -> set[int]:
    return {int(m.group(1)) for k in keys if (m := re.match(re.escape(part) + r"\.blocks\.(\d+)\.", k))}


def _side_problems(part: str, extra: set[str], other: set[str], side: str) -> list[str]:
    """Describe tensors of ``part`` that one side (``checkpoint`` or ``model``) has and the other lacks:
    whole blocks as index ranges (``video encoder blocks 2-3``), anything else by name."""
    label = _PARTS[part]
    who, whom = ("the checkpoint", "the model") if side == "checkpoint" else ("the model", "the checkpoint")
    whole = sorted(_block_ids(extra, part) - _block_ids(other, part))
    out = []
    if whole:
        runs: list[list[int]] = []
        for i in whole:
            if runs and i == runs[-1][1] + 1:
                runs[-1][1] = i
            else:
                runs.append([i, i])
        ids = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
        depth = _count_blocks(sorted(other), part + ".blocks.")
        out.append(f"{who} has {label} block{'s' if len(whole) > 1 else ''} {ids} that {whom} (depth {depth}) lacks")
    rest = sorted(k for k in extra if not any(k.startswith(f"{part}.blocks.{i}.") for i in whole))
    if rest:  # full names, so that they can be looked up in either state dict
        names = ", ".join(rest[:4]) + (f" and {len(rest) - 4} more" if len(rest) > 4 else "")
        out.append(f"{who} has {label} tensor{'s' if len(rest) > 1 else ''} {names} that {whom} lacks")
    return out


def backbone_problems(checkpoint_keys: set[str], model_keys: set[str]) -> list[str]:
    """How the checkpoint's backbone differs from the model's, part by part (parts the model lacks
    altogether, e.g. the audio encoder of a video-only model, are not problems)."""
    problems = []
    for part, label in _PARTS.items():
        mine = {k for k in model_keys if k.startswith(part + ".")}
        theirs = {k for k in checkpoint_keys if k.startswith(part + ".")}
        if not mine:
            continue
        if not theirs:
            problems.append(f"the checkpoint has no {label} (the model's {len(mine)} tensors)")
            continue
        problems += _side_problems(part, theirs - mine, mine, "checkpoint")
        problems += _side_problems(part, mine - theirs, theirs, "model")
    return _merge_twins(problems)


def _merge_twins(problems: list[str]) -> list[str]:
    """The usual case, both encoders deeper or shallower alike, reads as one clause:
    ``video and audio encoder blocks 2-3`` instead of the same sentence twice."""
    out = []
    for p in problems:
        if "video encoder" in p and p.replace("video encoder", "audio encoder") in problems:
            out.append(p.replace("video encoder", "video and audio encoder"))
        elif not ("audio encoder" in p and p.replace("audio encoder", "video encoder") in problems):
            out.append(p)
    return out


def load_pretrained_into_finetune(
    model: nn.Module, state_dict: dict[str, torch.Tensor], allow_partial: bool = False
) -> LoadReport:
    """Load a pre-training state dict (official names, ours, or a container with 'model') into a
    fine-tuning model.

    Backbone keys (``encoder.*``, ``encoder_audio.*``, ``encoder_fusion.*``) map one-to-one.  A backbone
    tensor of another shape is a CheckpointMismatchError; blocks or tensors that only one side has
    (a depth-4 checkpoint into a depth-2 model, or the reverse) are a PartialInitError naming them,
    because a silently truncated backbone trains and evaluates without any sign of what was lost;
    ``allow_partial=True`` loads what both have.  Decoder keys, mask tokens and encoder_to_decoder are
    skipped; ``layer_weights_*``, ``fc_norm`` and ``head`` stay at their init unless the checkpoint has
    them with the same shape.  ``LoadReport.summary()`` counts each kind.
    """
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    sd = convert_official_state_dict(state_dict)
    own = model.state_dict()
    for k, v in sd.items():
        if k in own and _kind(k) == "backbone" and tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointMismatchError(f"{k}: checkpoint shape {tuple(v.shape)} vs model {tuple(own[k].shape)}")
    parts = {k.split(".")[0] for k in own if _kind(k) == "backbone"}
    report = LoadReport(problems=backbone_problems(set(sd), set(own)))
    for k, v in sd.items():
        if k in own and _kind(k) in ("backbone", "head") and tuple(v.shape) == tuple(own[k].shape):
            report.loaded.append(k)
        else:
            report.ignored.append(k)
            if _kind(k) == "backbone":
                (report.dropped if k.split(".")[0] in parts else report.unused).append(k)
    untouched = sum(_kind(k) == "backbone" and k not in sd for k in own)
    if report.problems and not allow_partial:
        raise PartialInitError(report.problems, len(report.dropped), untouched)
    # a meta-device model (used to check keys without memory) takes the tensors by assignment
    model.load_state_dict(
        {k: sd[k] for k in report.loaded}, strict=False, assign=any(p.is_meta for p in model.parameters())
    )
    report.missing = sorted(set(own) - set(report.loaded))
    report.loaded.sort()
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
    else:  # official file: the overrides help the inference (skip layers of a bare dict)
        cfg, file_stage = infer_config(sd, container.get("args"), overrides)
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
