"""``avf-models`` command line: print model sizes, convert official checkpoints.

User errors (an unknown model, a missing or foreign checkpoint, a wrong flag) print one line
``avf-models: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import typing
from collections import Counter
from pathlib import Path
from typing import NoReturn

import torch

DESCRIPTION = """\
Tools for the AVF-MAE++ models in avf-models.

  avf-models info avfmae_pp_base            parameter counts (pre-training and fine-tuning)
  avf-models info avfmae_pp_huge --num-classes 7
  avf-models convert --checkpoint official.pth --out converted/
                                            convert a released AVF-MAE++ checkpoint

Models: avfmae_pp_tiny, avfmae_pp_base, avfmae_pp_large, avfmae_pp_huge, hicmae_base.
"""

CONVERTED = "checkpoint.pt"  # the file convert writes into --out

CONVERT_HELP = f"""\
Convert a released AVF-MAE++ checkpoint (pre-training or fine-tuning .pth, the official container
{{'model': state_dict, 'optimizer', 'epoch', 'scaler', 'args'}}) into this package's format
{{'model': state_dict, 'model_name': str, 'config': dict, 'stage': 'pretrain'|'finetune'}}, written
to OUT/{CONVERTED}.

The size (Base/Large/Huge), depth and stage are read from the tensor shapes; skip-connection layers
from the checkpoint's args when present.  Conversion is strict: it fails, listing the keys, if any
official key has no counterpart or any model tensor would stay unfilled.  Files are read with
torch.load(weights_only=True), so untrusted pickles cannot execute code.

A bare state dict (no args) of a depth other than the named sizes' does not say its skip-connection
layers; give them with --set model.skip_layers=I,J,... (one per decoder block after the first).  Any
ModelConfig field can be set this way; a value that contradicts the tensors (depth, width, decoder
depth, classes) or the checkpoint's args is refused with the reason.

Use the result with:
  avf-train finetune --init OUT ...                       # avf-train reads OUT/{CONVERTED}
  sd = torch.load("OUT/{CONVERTED}", weights_only=True)["model"]
  avf_models.load_pretrained_into_finetune(model, sd)     # pre-training -> fine-tuning
  model.load_state_dict(sd)                               # same stage
"""


class _Parser(argparse.ArgumentParser):
    """argparse with the avf error contract: one line ``avf-models: error: ...``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"avf-models: error: {message} (see {self.prog} --help)\n")


def _info(args: argparse.Namespace) -> int:
    from .factory import count_parameters, create_model

    with torch.device("meta"):
        pre = create_model(args.name, "pretrain")
        cfg = pre.config
        print(
            f"{args.name}: width {cfg.embed_dim}, heads {cfg.num_heads}, depth {cfg.depth}/{cfg.depth_audio} "
            f"(video/audio), decoder {cfg.decoder_embed_dim}x{cfg.decoder_depth}, skips {list(cfg.skip_layers)}"
        )
        spec = cfg.input_spec
        print(
            f"inputs: video (B, {', '.join(map(str, spec.video_shape))}), "
            f"audio (B, {', '.join(map(str, spec.audio_shape))})"
        )
        print(f"pre-training parameters: {count_parameters(pre):,}")
        by: Counter[str] = Counter()
        for n, p in pre.named_parameters():
            by[n.split(".")[0]] += p.numel()
        for k, v in by.items():
            print(f"  {k:28s} {v:>13,}")
        if cfg.encoder_type == "lgi":
            ft = create_model(args.name, "finetune", num_classes=args.num_classes)
            print(f"fine-tuning parameters ({args.num_classes} classes): {count_parameters(ft):,}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .convert import convert_checkpoint

    src, dst = _convert_paths(args)
    if not Path(src).is_file():
        raise FileNotFoundError(f"checkpoint {src} does not exist")
    cfg = convert_checkpoint(src, dst, _model_overrides(args.set or []))
    print(f"wrote {dst} ({cfg.name}-sized, depth {cfg.depth}, skips {list(cfg.skip_layers)})")
    return 0


def _model_overrides(assignments: list[str]) -> dict[str, object]:
    """``--set model.skip_layers=3,6,9`` (``model.`` optional) -> ``{"skip_layers": (3, 6, 9)}``, typed as
    the ModelConfig field, so a typo or a bad value fails before the checkpoint is read."""
    from .config import ModelConfig

    hints = typing.get_type_hints(ModelConfig)
    out: dict[str, object] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key = key.strip().removeprefix("model.")
        if not sep or key not in hints:
            close = difflib.get_close_matches(key, hints, 1)
            raise ValueError(
                f"--set {assignment!r}: expected model.FIELD=VALUE with a ModelConfig field"
                + (f" (did you mean model.{close[0]}?)" if close else " such as model.skip_layers=3,6,9")
            )
        out[key] = _typed(key, raw.strip(), hints[key])
    return out


def _typed(key: str, raw: str, hint: object) -> object:
    """One ``--set`` value as its field's type: tuples as ``1,3`` or ``[1,3]``, booleans as true/false."""
    choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()
    try:
        if typing.get_origin(hint) is tuple:
            value: object = tuple(int(x) for x in raw.strip("[]() ").split(",") if x.strip())
            if not value:
                raise ValueError
        elif hint is bool:
            value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[raw.lower()]
        elif hint in (int, float):
            value = hint(raw)  # type: ignore[operator]
        elif choices and raw not in choices:
            raise ValueError
        else:
            value = raw
    except (ValueError, KeyError):
        kind = f"one of {', '.join(choices)}" if choices else getattr(hint, "__name__", str(hint))
        raise ValueError(f"--set model.{key}={raw}: expected {kind}") from None
    return value


def _convert_paths(args: argparse.Namespace) -> tuple[str, Path]:
    """``--checkpoint SRC --out DIR`` -> (SRC, DIR/checkpoint.pt); the old ``convert SRC DST`` form
    (hidden, for existing scripts) writes DST itself."""
    if args.legacy:
        if args.checkpoint or args.out or len(args.legacy) != 2:
            raise ValueError("use --checkpoint SRC --out DIR (the old form is exactly two paths: SRC DST)")
        return args.legacy[0], Path(args.legacy[1])
    if not args.checkpoint or not args.out:
        raise ValueError("convert needs --checkpoint (the official .pth) and --out (a folder)")
    out = Path(args.out)
    if out.is_file():
        raise ValueError(f"--out {out} is a file; --out is the folder that gets {CONVERTED}")
    return args.checkpoint, out / CONVERTED


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="avf-models", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{info,convert}")
    p = sub.add_parser(
        "info",
        help="print parameter counts of a named model",
        description="Print architecture summary and parameter counts (built on the meta "
        "device, so even Huge takes no memory).",
    )
    p.add_argument("name", help="model name, e.g. avfmae_pp_base")
    p.add_argument("--num-classes", type=int, default=11, help="classes of the fine-tuning head (default 11, MAFW)")
    p.set_defaults(run=_info)
    p = sub.add_parser(
        "convert",
        help="convert an official checkpoint",
        description=CONVERT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", metavar="FILE.pth", help="official checkpoint to convert (required)")
    p.add_argument("--out", metavar="DIR", help=f"folder for {CONVERTED} (required; created)")
    p.add_argument(
        "--set",
        action="append",
        metavar="model.FIELD=VALUE",
        help="an architecture value the checkpoint does not say, checked against its tensors (repeatable), "
        "e.g. --set model.skip_layers=1,3 for a bare state dict of non-default depth",
    )
    p.add_argument("legacy", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(run=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors become one ``avf-models: error:`` line and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, KeyError, FileNotFoundError) as exc:  # CheckpointMismatchError is a ValueError
        message = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
        print(f"avf-models: error: {' '.join(message.split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
