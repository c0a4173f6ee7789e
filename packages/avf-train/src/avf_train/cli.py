"""``avf-train``: pretrain | postpretrain | finetune | predict.

Config precedence (later wins): the stage's paper defaults, ``RUN/config.yaml`` when resuming,
``--config FILE.yaml``, the per-field flags below, then ``--set section.field=value`` (repeatable).

Batch size and learning rate follow the official scripts: ``--batch-size`` counts clips per
process per micro-step; with repeated augmentation (supervised stages, ``data.repeated_aug``,
default 2) each clip enters the batch as that many augmented copies, so 32 clips train on 64
views. An epoch is ``clips // (batch x processes x grad-accum)`` optimizer steps, and ``base_lr``,
``min_lr`` and ``warmup_lr`` are scaled by that global batch (in clips) / 256.

Labelled stages take the label map (class names in index order) from the shards that
``avf-data import --protocol NAME`` wrote; ``--num-classes`` is inferred from it, and train and
``--val-data`` shards or an ``--init`` head numbered differently are refused.
Launch on several GPUs with ``torchrun --nproc_per_node N -m avf_train.cli pretrain ...``
(or ``torchrun ... $(which avf-train) ...``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import checkpoint as ckpt_io
from .config import MODEL_SIZES, TrainConfig, load_yaml, set_dotted, stage_defaults, update
from .errors import StageError, one_line


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="run folder (config.yaml, checkpoints/, checkpoint, metrics.jsonl, tb/)")
    p.add_argument("--config", help="YAML file, or a shipped config name (pretrain_base|pretrain_large|"
                   "pretrain_huge|postpretrain_cea|finetune_cea), applied on top of the stage defaults")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. --set optim.lr=1e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from RUN/checkpoint")
    p.add_argument("--model", help=f"size ({'|'.join(MODEL_SIZES)}) or avf-models name")
    p.add_argument("--batch-size", type=int,
                   help="clips per process per micro-step (run.batch_size), counted as the official scripts "
                        "count it: with repeated augmentation each clip adds data.repeated_aug views")
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (schedule unchanged)")
    p.add_argument("--lr", type=float, help="absolute peak lr (otherwise base_lr x global batch / 256)")
    p.add_argument("--base-lr", type=float)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--clip-grad", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--fsdp", action="store_true", help="FSDP2 instead of DDP (Huge)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avf-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="self-supervised AVF-MAE++ pre-training on unlabelled shards")
    _common(p)
    p.add_argument("--shards", help="unlabelled shards: glob, folder or comma-separated list")

    for name, text in (("postpretrain", "supervised post-pre-training on the labelled hybrid"),
                       ("finetune", "targeted fine-tuning on one dataset")):
        p = sub.add_parser(name, help=text)
        _common(p)
        p.add_argument("--init", help="checkpoint file, RUN/checkpoint or run folder to start from")
        p.add_argument("--data", help="labelled shards (avf-data import)")
        p.add_argument("--val-data", help="held-out shards: predictions.jsonl is written after training")
        p.add_argument("--task", choices=["cea", "dea", "mer"])
        p.add_argument("--num-classes", type=int,
                       help="outputs of the head; default: the size of the shards' label map (must match it)")
        p.add_argument("--modality", choices=["av", "audio", "video"])

    p = sub.add_parser("predict", help="test-time predictions (segments x crops views) as JSONL")
    p.add_argument("--ckpt", required=True, help="post-pre-trained or fine-tuned checkpoint / run folder")
    p.add_argument("--data", required=True, help="shards to predict")
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--segments", type=int)
    p.add_argument("--crops", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="fp32")
    p.add_argument("--fold", help="fold id written into every row (avf-eval groups models by fold)")
    return parser


def config_path(name: str) -> Path:
    """A YAML path, or the name of a shipped config (``avf_train/configs/<name>.yaml``)."""
    path = Path(name)
    if path.exists():
        return path
    shipped = Path(__file__).parent / "configs" / f"{name.removesuffix('.yaml')}.yaml"
    if shipped.exists():
        return shipped
    known = sorted(p.stem for p in (Path(__file__).parent / "configs").glob("*.yaml"))
    raise FileNotFoundError(f"config {name!r} is neither a file nor a shipped config ({', '.join(known)})")


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Apply the precedence chain to get the run's full config."""
    stage = args.command
    cfg = stage_defaults(stage)
    if args.resume and args.out and (Path(args.out) / "config.yaml").exists():
        cfg = load_yaml(Path(args.out) / "config.yaml")
    if args.config:
        base = load_yaml(config_path(args.config))
        if base.stage != stage:
            raise StageError(f"--config {args.config} is for stage {base.stage!r}, not {stage!r}")
        cfg = base
    # task-driven defaults for the labelled stages
    task = getattr(args, "task", None)
    if task is not None:
        cfg.finetune.task = task
        if stage == "postpretrain":
            cfg.data.label_map = {"cea": "cea13", "mer": "mer3"}.get(task, "")
            if task == "dea":
                raise StageError("post-pre-training has no labelled hybrid for DEA (paper §4.2)")
    flags = {
        "run.out": args.out, "model.name": args.model, "run.batch_size": args.batch_size,
        "run.epochs": args.epochs, "run.max_steps": args.max_steps, "optim.lr": args.lr,
        "optim.base_lr": args.base_lr, "data.num_workers": args.num_workers, "run.precision": args.precision,
        "optim.grad_accum": args.grad_accum, "optim.clip_grad": args.clip_grad, "run.seed": args.seed,
        "run.device": args.device, "data.shards": getattr(args, "shards", None) or getattr(args, "data", None),
        "data.val_shards": getattr(args, "val_data", None), "finetune.init": getattr(args, "init", None),
        "finetune.num_classes": getattr(args, "num_classes", None), "model.modality": getattr(args, "modality", None),
    }
    for key, value in flags.items():
        if value is not None:
            section, field = key.split(".")
            update(cfg, {section: {field: value}})
    if args.fsdp:
        cfg.run.fsdp = True
    for assignment in args.set:
        set_dotted(cfg, assignment)
    cfg.stage = stage
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Entry point; expected user errors (missing shards, wrong-stage checkpoints, bad config
    fields, shape mismatches) become one ``avf-train: error:`` line and exit status 2."""
    from .trainer import train

    args = build_parser().parse_args(argv)
    try:
        if args.command == "predict":
            from .predict import predict

            summary = predict(args.ckpt, args.data, args.out, batch_size=args.batch_size,
                              num_workers=args.num_workers, segments=args.segments, crops=args.crops,
                              device=args.device, precision=args.precision, fold=args.fold)
            if summary:
                print(json.dumps(summary))
            return 0
        try:
            cfg = resolve_config(args)
        except StageError:
            raise
        except (KeyError, ValueError) as exc:
            raise StageError(f"config: {exc}") from exc
        result = train(cfg, resume=args.resume)
        if cfg.stage != "pretrain" and cfg.data.val_shards:  # every rank: predict is distributed too
            from .predict import predict

            summary = predict(str(ckpt_io.resolve(result.run_dir)), cfg.data.val_shards,
                              result.run_dir / "predictions.jsonl", batch_size=cfg.run.batch_size,
                              device=cfg.run.device)
            if summary:
                print(json.dumps(summary))
        return 0
    except (FileNotFoundError, FileExistsError, StageError) as exc:
        print(f"avf-train: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
