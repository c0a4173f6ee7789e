"""avf-train: pretrain | postpretrain | finetune | predict.

  avf-train pretrain     --data 'CORPUS/shards/*.tar' --out RUN [--model base] [--config pretrain_base]
  avf-train postpretrain --init RUN/checkpoint --data 'HYBRID/*.tar' --task cea|mer --out RUN2
  avf-train finetune     --init RUN2 --data 'TRAIN/*.tar' --val-data 'TEST/*.tar' --out RUN3
  avf-train predict      --checkpoint RUN3 --data 'TEST/*.tar' --out PREDS   (PREDS/predictions.jsonl)

Flags: --data shards (glob, folder or comma list); --init the checkpoint a stage starts from;
--checkpoint the checkpoint predict runs; --out always a folder; --device auto|cpu|cuda[:N].
A checkpoint is a file, RUN/checkpoint or the run folder.

Config precedence (later wins): the stage's paper defaults, RUN/config.yaml when resuming,
--config FILE.yaml (or a shipped name), the per-field flags, then --set section.field=value
(repeatable, values parsed as YAML: --set optim.betas=[0.9,0.95], --set run.tensorboard=false).

Batch size and learning rate follow the official scripts: --batch-size counts clips per process
per micro-step; with repeated augmentation (supervised stages, data.repeated_aug, default 2) each
clip enters the batch as that many augmented copies, so 32 clips train on 64 views. An epoch is
clips // (batch x processes x grad-accum) optimizer steps, and base_lr, min_lr and warmup_lr are
scaled by that global batch (in clips) / 256.

Labelled stages take the label map (class names in index order) from the shards that
`avf-data import --protocol NAME` wrote; --num-classes is inferred from it, and train and
--val-data shards or an --init head numbered differently are refused.
Launch on several GPUs with `torchrun --nproc_per_node N -m avf_train.cli pretrain ...`.
User errors print one line `avf-train: error: ...` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

from avf_data.settings import ConfigError, merge

from .config import MODEL_SIZES, migrate, parse_override, resolve, task_label_map
from .errors import StageError, one_line

USER_ERRORS = (ConfigError, StageError, FileNotFoundError, FileExistsError)


class _Parser(argparse.ArgumentParser):
    """argparse with the avf error contract: one line ``avf-train: error: ...``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"avf-train: error: {message} (see {self.prog} --help)\n")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", metavar="RUN", help="run folder (config.yaml, checkpoints/, checkpoint, metrics.jsonl, tb/)"
    )
    p.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="YAML file, or the name of a shipped config: pretrain_base, "
        "pretrain_large, pretrain_huge, postpretrain_cea, finetune_cea (on top of the stage defaults)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override any config field, e.g. --set optim.lr=1e-4 (repeatable, values parsed as YAML)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from RUN/checkpoint")
    p.add_argument("--model", help=f"size ({'|'.join(MODEL_SIZES)}) or avf-models name")
    p.add_argument(
        "--batch-size",
        type=int,
        help="clips per process per micro-step (run.batch_size), counted as the official scripts "
        "count it: with repeated augmentation each clip adds data.repeated_aug views",
    )
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (schedule unchanged)")
    p.add_argument("--lr", type=float, help="absolute peak lr (otherwise base_lr x global batch / 256)")
    p.add_argument("--base-lr", type=float)
    p.add_argument("--num-workers", type=int, help="loader worker processes per rank")
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--clip-grad", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument("--fsdp", action="store_true", help="FSDP2 instead of DDP (Huge)")


def _data_arg(p: argparse.ArgumentParser, text: str, required: bool = False) -> None:
    """``--data``, with the old spelling ``--shards`` kept as a hidden alias for existing scripts."""
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--data", metavar="SHARDS", help=text)
    group.add_argument("--shards", dest="data", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="avf-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{pretrain,postpretrain,finetune,predict}")

    p = sub.add_parser("pretrain", help="self-supervised AVF-MAE++ pre-training on unlabelled shards")
    _data_arg(p, "unlabelled shards (avf-data build): glob, folder or comma-separated list")
    _run_args(p)
    p.set_defaults(run=_train)

    for name, text, tasks in (
        ("postpretrain", "supervised post-pre-training on the labelled hybrid", ["cea", "mer"]),
        ("finetune", "targeted fine-tuning on one dataset", ["cea", "dea", "mer"]),
    ):
        p = sub.add_parser(name, help=text)
        _data_arg(p, "labelled shards (avf-data import): glob, folder or comma-separated list")
        p.add_argument(
            "--init", metavar="CHECKPOINT", help="checkpoint to start from: file, RUN/checkpoint or run folder"
        )
        p.add_argument(
            "--val-data", metavar="SHARDS", help="held-out shards: RUN/predictions.jsonl is written after training"
        )
        p.add_argument(
            "--task",
            choices=tasks,
            help="cea (13-class hybrid), mer (3 classes)"
            if name == "postpretrain"
            else "cea, mer (classes) or dea (regression on the clips' targets)",
        )
        p.add_argument(
            "--num-classes",
            type=int,
            help="outputs of the head; default: the size of the shards' label map (must match it)",
        )
        p.add_argument("--modality", choices=["av", "audio", "video"])
        _run_args(p)
        p.set_defaults(run=_train)

    p = sub.add_parser("predict", help="test-time predictions (segments x crops views) as OUT/predictions.jsonl")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--checkpoint",
        metavar="CHECKPOINT",
        help="post-pre-trained or fine-tuned checkpoint: file, RUN/checkpoint or run folder",
    )
    group.add_argument("--ckpt", dest="checkpoint", help=argparse.SUPPRESS)
    _data_arg(p, "shards to predict", required=True)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for predictions.jsonl (created)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="data.FIELD=VALUE",
        help="override a data.* field of the checkpoint's config, e.g. --set data.clip.test_segments=1",
    )
    p.add_argument("--segments", type=int, help="temporal test views per clip (data.clip.test_segments)")
    p.add_argument("--crops", type=int, help="spatial test views per segment (data.clip.test_crops)")
    p.add_argument("--batch-size", type=int, default=8, help="views per forward pass")
    p.add_argument("--num-workers", type=int, default=0, help="loader worker processes")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="fp32")
    p.add_argument("--fold", help="fold id written into every row (avf-eval groups models by fold)")
    p.set_defaults(run=_predict)
    return parser


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The per-field flags as dotted config keys (None = not given)."""
    task = getattr(args, "task", None)
    return {
        "run.out": args.out,
        "model.name": args.model,
        "run.batch_size": args.batch_size,
        "run.epochs": args.epochs,
        "run.max_steps": args.max_steps,
        "optim.lr": args.lr,
        "optim.base_lr": args.base_lr,
        "data.num_workers": args.num_workers,
        "run.precision": args.precision,
        "optim.grad_accum": args.grad_accum,
        "optim.clip_grad": args.clip_grad,
        "run.seed": args.seed,
        "run.device": args.device,
        "run.fsdp": True if args.fsdp else None,
        "data.shards": args.data,
        "data.val_shards": getattr(args, "val_data", None),
        "finetune.init": getattr(args, "init", None),
        "finetune.num_classes": getattr(args, "num_classes", None),
        "model.modality": getattr(args, "modality", None),
        "finetune.task": task,
        # post-pre-training's label map follows its task (paper Table 3 hybrids)
        "data.label_map": task_label_map(task) if task and args.command == "postpretrain" else None,
    }


def _train(args: argparse.Namespace) -> int:
    from . import checkpoint as ckpt_io
    from .predict_shards import predict_shards
    from .trainer import train

    cfg = resolve(
        args.command,
        config=args.config,
        resume_dir=args.out if args.resume else None,
        flags=_flags(args),
        sets=args.set,
    )
    result = train(cfg, resume=args.resume)
    if cfg.stage != "pretrain" and cfg.data.val_shards:  # every rank: predict is distributed too
        summary = predict_shards(
            ckpt_io.resolve(result.run_dir),
            cfg.data.val_shards,
            result.run_dir,
            batch_size=cfg.run.batch_size,
            device=cfg.run.device,
        )
        if summary:
            print(json.dumps(summary))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .predict_shards import PREDICTIONS, predict_shards

    if args.out.endswith(".jsonl"):
        raise ConfigError(f"--out {args.out!r} looks like a file; --out is the folder that gets {PREDICTIONS}")
    views = {k: v for k, v in (("test_segments", args.segments), ("test_crops", args.crops)) if v is not None}
    overrides: dict[str, Any] = {"data": {"clip": views}}
    for assignment in args.set:
        overrides = merge(overrides, migrate(parse_override(assignment)))
    if set(overrides) != {"data"}:
        raise ConfigError(
            f"predict takes --set data.FIELD=VALUE only (the model comes from the checkpoint), "
            f"got {', '.join(sorted(set(overrides) - {'data'}))}"
        )
    summary = predict_shards(
        args.checkpoint,
        args.data,
        args.out,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        precision=args.precision,
        fold=args.fold,
        data_overrides=overrides["data"],
    )
    if summary:
        print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; expected user errors (missing shards, wrong-stage checkpoints, bad config
    keys or values, shape mismatches) become one ``avf-train: error:`` line and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as exc:
        print(f"avf-train: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
