"""``avf-models`` command line: convert official checkpoints, print model sizes."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import torch

DESCRIPTION = """\
Tools for the AVF-MAE++ models in avf-models.

  avf-models info avfmae_pp_base            parameter counts (pre-training and fine-tuning)
  avf-models info avfmae_pp_huge --num-classes 7
  avf-models convert official.pth ours.pth  convert a released AVF-MAE++ checkpoint

Models: avfmae_pp_tiny, avfmae_pp_base, avfmae_pp_large, avfmae_pp_huge, hicmae_base.
"""

CONVERT_HELP = """\
Convert a released AVF-MAE++ checkpoint (pre-training or fine-tuning .pth, the official container
{'model': state_dict, 'optimizer', 'epoch', 'scaler', 'args'}) into this package's format
{'model': state_dict, 'config': dict, 'stage': 'pretrain'|'finetune'}.

The size (Base/Large/Huge), depth and stage are read from the tensor shapes; skip-connection layers
from the checkpoint's args when present.  Conversion is strict: it fails, listing the keys, if any
official key has no counterpart or any model tensor would stay unfilled.  Files are read with
torch.load(weights_only=True), so untrusted pickles cannot execute code.

Use the result with:
  sd = torch.load("ours.pth", weights_only=True)["model"]
  avf_models.load_pretrained_into_finetune(model, sd)     # pre-training -> fine-tuning
  model.load_state_dict(sd)                               # same stage
"""


def _info(args: argparse.Namespace) -> int:
    from .factory import count_parameters, create_model

    with torch.device("meta"):
        pre = create_model(args.name, "pretrain")
        cfg = pre.config
        print(f"{args.name}: width {cfg.embed_dim}, heads {cfg.num_heads}, depth {cfg.depth}/{cfg.depth_audio} "
              f"(video/audio), decoder {cfg.decoder_embed_dim}x{cfg.decoder_depth}, skips {list(cfg.skip_layers)}")
        spec = cfg.input_spec
        print(f"inputs: video (B, {', '.join(map(str, spec.video_shape))}), audio (B, {', '.join(map(str, spec.audio_shape))})")
        print(f"pre-training parameters: {count_parameters(pre):,}")
        by = Counter()
        for n, p in pre.named_parameters():
            by[n.split(".")[0]] += p.numel()
        for k, v in by.items():
            print(f"  {k:28s} {v:>13,}")
        if cfg.encoder_type == "lgi":
            ft = create_model(args.name, "finetune", num_classes=args.num_classes)
            print(f"fine-tuning parameters ({args.num_classes} classes): {count_parameters(ft):,}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .convert import CheckpointMismatchError, convert_checkpoint

    try:
        cfg = convert_checkpoint(args.src, args.dst)
    except CheckpointMismatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst} ({cfg.name}-sized, depth {cfg.depth}, skips {list(cfg.skip_layers)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avf-models", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print parameter counts of a named model",
                       description="Print architecture summary and parameter counts (built on the meta "
                                   "device, so even Huge takes no memory).")
    p.add_argument("name", help="model name, e.g. avfmae_pp_base")
    p.add_argument("--num-classes", type=int, default=11, help="classes of the fine-tuning head (default 11, MAFW)")
    p.set_defaults(func=_info)
    p = sub.add_parser("convert", help="convert an official checkpoint", description=CONVERT_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="official .pth file")
    p.add_argument("dst", help="output .pth file")
    p.set_defaults(func=_convert)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
