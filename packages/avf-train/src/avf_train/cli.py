"""avf-train: pretrain | postpretrain | finetune | predict | embed.

  avf-train pretrain     --data 'CORPUS/shards/*.tar' --out RUN [--model base] [--config pretrain_base]
  avf-train postpretrain --init RUN/checkpoint --data 'HYBRID/*.tar' --task cea|mer --out RUN2
  avf-train finetune     --init RUN2 --data 'TRAIN/*.tar' --val-data 'TEST/*.tar' --out RUN3
  avf-train syncnet      --data 'CORPUS/shards/*.tar' --out SYNC   (a sync expert: SYNC/syncnet_expert.model
                         + .json, for avf-data sync / build --syncnet-weights; needs avf-data[curate])
  avf-train predict      --checkpoint RUN3 --data 'TEST/*.tar' --out PREDS   (PREDS/predictions.jsonl)
  avf-train embed        --checkpoint RUN3 --data 'TEST/*.tar' --out FEATS   (FEATS/embeddings-*.npz)
  avf-train embed        --checkpoint RUN3 --video clip.mp4 --out FEATS

A smoke run first: add --max-steps 2 to any training command (the schedule is unchanged, the run
just stops there and saves its checkpoint).

Flags: --data shards (glob, folder or comma list); --init the checkpoint a stage starts from;
--checkpoint the checkpoint predict and embed run; --out always a folder; --device auto|cpu|cuda[:N].
A checkpoint is a file, RUN/checkpoint or the run folder.

Config precedence (later wins): the stage's paper defaults, RUN/config.yaml when resuming,
--config FILE.yaml (or a shipped name), the per-field flags, then --set section.field=value
(repeatable, values parsed as YAML: --set optim.betas=[0.9,0.95], --set run.tensorboard=false).

--batch-size counts clips per process per micro-step, everywhere. In the supervised stages each
clip enters the batch as data.repeated_aug augmented copies (default 2, as the official scripts),
so 32 clips train on 64 views; in predict, embed and at test time each clip brings all its
segments x crops views (embed averages them into one vector per clip). An epoch is
clips // (batch x processes x grad-accum) optimizer steps, and base_lr, min_lr and warmup_lr
are scaled by that global batch (in clips) / 256.

While training, a terminal shows a progress bar (step, epoch, loss, lr, clips/s, ETA); a log file
gets a plain line every run.log_every steps (and at least every 30 s). Each saved checkpoint gets
a line, and the run ends with a short summary; RUN/summary.json holds the same for scripts.

Labelled stages take the label map (class names in index order) from the shards that
`avf-data import --protocol NAME` wrote; --num-classes is inferred from it, and train and
--val-data shards or an --init head numbered differently are refused.
Launch on several GPUs with `torchrun --nproc_per_node N -m avf_train.cli pretrain ...`.
User errors print one line `avf-train: error: ...` and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

from avf_data.settings import ConfigError, merge

from .config import MODEL_SIZES, loader_workers, parse_override, resolve, task_label_map
from .errors import StageError, one_line

USER_ERRORS = (ConfigError, StageError, FileNotFoundError, FileExistsError)
TRAINING = ("pretrain", "postpretrain", "finetune", "syncnet")
SUPERVISED = ("postpretrain", "finetune")
AVF_MODELS = ("pretrain", *SUPERVISED)  # the stages that train an avf-models network (syncnet: SyncNet v2)


class _Parser(argparse.ArgumentParser):
    """argparse with the avf error contract: one line ``avf-train: error: ...``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"avf-train: error: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class Flag:
    """One command-line flag, declared once: the sub-commands that take it and the config key it sets
    (``None``: read by the command itself)."""

    name: str
    key: str | None
    commands: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


def _f(name: str, key: str | None, commands: tuple[str, ...], help: str, **options: Any) -> Flag:
    if options.get("type") in (int, float):
        options.setdefault("metavar", "N" if options["type"] is int else "X")
    return Flag(name, key, commands, {"help": help, **options})


def _workers(text: str) -> int | str:
    """--num-workers: a count, or ``auto`` (config.loader_workers resolves it)."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


ALL = (*TRAINING, "predict", "embed")
FLAGS: tuple[Flag, ...] = (
    _f("--data", "data.shards", ALL, "shards: glob, folder or comma-separated list (avf-data build/import)",
       metavar="SHARDS"),
    _f("--init", "finetune.init", SUPERVISED, "checkpoint to start from: file, RUN/checkpoint or run folder",
       metavar="CHECKPOINT"),
    _f("--allow-partial-init", "finetune.allow_partial_init", SUPERVISED,
       "start even when --init holds encoder or fusion blocks the model lacks (they are dropped; "
       "without this flag that is an error naming the blocks)", action="store_true", default=None),
    _f("--val-data", "data.val_shards", (*SUPERVISED, "syncnet"),
       "held-out shards: RUN/predictions.jsonl is written and scored after training (syncnet: the clips "
       "its threshold is calibrated on)", metavar="SHARDS"),
    _f("--num-classes", "finetune.num_classes", SUPERVISED,
       "outputs of the head; default: the size of the shards' label map (must match it)", type=int),
    _f("--modality", "model.modality", SUPERVISED, "av (default), audio or video", choices=["av", "audio", "video"]),
    _f("--checkpoint", None, ("predict", "embed"), "post-pre-trained or fine-tuned checkpoint: file, RUN/checkpoint or "
       "run folder", metavar="CHECKPOINT", required=True),
    _f("--out", "run.out", ALL, "the folder for the run (config.yaml, checkpoint, metrics.jsonl, summary.json) "
       "or, in predict, for predictions.jsonl, in embed, for embeddings-NNNNNN.npz and embeddings.json", metavar="DIR"),
    _f("--config", None, TRAINING, "YAML file, or the name of a shipped config: pretrain_base, pretrain_large, "
       "pretrain_huge, postpretrain_cea, finetune_cea, syncnet (on top of the stage defaults)", metavar="FILE.yaml"),
    _f("--set", None, ALL, "override a config field, e.g. --set optim.lr=1e-4 (repeatable, values parsed as YAML; "
       "predict and embed take data.* only)", action="append", default=[], metavar="SECTION.FIELD=VALUE"),
    _f("--resume", None, TRAINING, "continue the run in --out from RUN/checkpoint", action="store_true"),
    _f("--model", "model.name", AVF_MODELS, f"size ({'|'.join(MODEL_SIZES)}) or avf-models name"),
    _f("--batch-size", "run.batch_size", ALL, "clips per process per micro-step (each clip adds its "
       "data.repeated_aug views when training, its segments x crops views in predict and embed)", type=int),
    _f("--epochs", "run.epochs", TRAINING, "length of the schedule in epochs", type=float),
    _f("--max-steps", "run.max_steps", TRAINING, "stop after this many optimizer steps (schedule unchanged): "
       "a smoke run is --max-steps 2", type=int),
    _f("--lr", "optim.lr", TRAINING, "absolute peak lr (otherwise base_lr x global batch / 256)", type=float),
    _f("--base-lr", "optim.base_lr", TRAINING, "peak lr per 256 clips of global batch", type=float),
    _f("--num-workers", "data.num_workers", ALL, "loader worker processes per rank, or auto (the default: the "
       "CPUs per rank less one, 1 to 4)", type=_workers, metavar="N|auto"),
    _f("--precision", "run.precision", ALL, "bf16 | fp16 | fp32 (predict, embed: bf16 | fp32)",
       choices=["bf16", "fp16", "fp32"]),
    _f("--grad-accum", "optim.grad_accum", TRAINING, "micro-steps per optimizer step", type=int),
    _f("--clip-grad", "optim.clip_grad", TRAINING, "gradient-norm clip (0: off)", type=float),
    _f("--seed", "run.seed", TRAINING, "seed of initialisation, data order, masks and augmentation", type=int),
    _f("--device", "run.device", ALL, "auto | cpu | cuda[:N] (default auto)"),
    _f("--fsdp", "run.fsdp", AVF_MODELS, "FSDP2 instead of DDP (Huge)", action="store_true", default=None),
    _f("--segments", "data.clip.test_segments", ("predict", "embed"), "temporal test views per clip", type=int),
    _f("--crops", "data.clip.test_crops", ("predict", "embed"), "spatial test views per segment", type=int),
    _f("--fold", None, ("predict",), "fold id written into every row (avf-eval groups models by fold)"),
    _f("--video", None, ("embed",), "face-crop clip file(s) to embed instead of --data shards, one clip each "
       "(decoded at 25 fps and 16 kHz mono as avf-data decodes sources, cut into the same test views)",
       nargs="+", metavar="FILE"),
)  # fmt: skip

HELP = {
    "pretrain": "self-supervised AVF-MAE++ pre-training on unlabelled shards",
    "postpretrain": "supervised post-pre-training on the labelled hybrid",
    "finetune": "targeted fine-tuning on one dataset",
    "syncnet": "a sync expert (SyncNet v2) trained on unlabelled shards, exported with its calibrated threshold "
    "as OUT/syncnet_expert.model + .json for avf-data sync and build --syncnet-weights",
    "predict": "test-time predictions (segments x crops views) as OUT/predictions.jsonl",
    "embed": "clip embeddings (fused = the head's input, pre-fusion video and audio), each the mean of the "
    "clip's segments x crops test views, as OUT/embeddings-NNNNNN.npz per shard or video (reruns skip "
    "finished ones); load with numpy.load or avf_train.embed.load_embeddings(OUT)",
}
TASKS = {
    "postpretrain": (["cea", "mer"], "cea (13-class hybrid) or mer (3 classes)"),
    "finetune": (["cea", "dea", "mer"], "cea, mer (classes) or dea (regression on the clips' targets)"),
}


# flags a command cannot run without (training may take them from --config; embed takes --data or --video)
REQUIRED = {"predict": ("--data", "--out"), "embed": ("--out",)}


def _add_command(sub: Any, command: str) -> argparse.ArgumentParser:
    """A sub-command with its flags from ``FLAGS`` (and ``--task`` for the supervised stages)."""
    p = sub.add_parser(command, help=HELP[command], description=HELP[command])
    for flag in FLAGS:
        if command in flag.commands:
            required = flag.name in REQUIRED.get(command, ())
            p.add_argument(flag.name, **({"required": True} if required else {}), **flag.options)
    if command in TASKS:
        choices, text = TASKS[command]
        p.add_argument("--task", choices=choices, help=text)
    p.set_defaults(run=_runner(command))
    return p


def _runner(command: str) -> Any:
    """The function that carries out ``command`` (imports stay inside them: --help is instant)."""
    return _train if command in TRAINING else {"predict": _predict, "embed": _embed}[command]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="avf-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(HELP) + "}")
    for command in HELP:
        _add_command(sub, command)
    return parser


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The per-field flags of ``args.command`` as dotted config keys (None = not given)."""
    values = {f.key: getattr(args, f.dest) for f in FLAGS if f.key and args.command in f.commands}
    task = getattr(args, "task", None)
    values["finetune.task"] = task
    if task and args.command == "postpretrain":  # post-pre-training's label map follows its task (Table 3)
        values["data.label_map"] = task_label_map(task)
    return values


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _train(args: argparse.Namespace) -> int:
    from . import checkpoint as ckpt_io
    from .predict_shards import predict_shards
    from .progress import summary_lines, write_summary
    from .trainer import train

    cfg = resolve(
        args.command,
        config=args.config,
        resume_dir=args.out if args.resume else None,
        flags=_flags(args),
        sets=args.set,
    )
    result = train(cfg, resume=args.resume)
    summary = dict(result.summary)
    if cfg.stage in SUPERVISED and cfg.data.val_shards:  # every rank: predict is distributed too
        scored = predict_shards(
            ckpt_io.resolve(result.run_dir),
            cfg.data.val_shards,
            result.run_dir,
            batch_size=cfg.run.batch_size,
            device=cfg.run.device,
        )
        if scored:
            summary["eval"] = {k: scored[k] for k in ("clips", "rows", "top1") if k in scored}
            summary["predictions"] = scored["out"]
    if cfg.stage == "syncnet" and _is_main_process():  # the weights file and its calibrated rule
        from .sync_export import export_expert

        summary["expert"] = export_expert(result.run_dir, cfg, lambda m: print(f"[avf-train syncnet] {m}", flush=True))
    if _is_main_process():
        write_summary(result.run_dir, summary)
        for line in summary_lines(summary):
            print(f"[avf-train {cfg.stage}] {line}", flush=True)
    return 0


def _data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``data.*`` changes of predict and embed (--segments, --crops, --set data.FIELD=VALUE):
    their model, and so all else, comes from the checkpoint."""
    if args.precision == "fp16":
        raise ConfigError(
            f"{args.command} runs in bf16 or fp32 (--precision bf16|fp32); fp16 is for training with a scaler"
        )
    views = {k: v for k, v in (("test_segments", args.segments), ("test_crops", args.crops)) if v is not None}
    overrides: dict[str, Any] = {"data": {"clip": views}}
    for assignment in args.set:
        overrides = merge(overrides, parse_override(assignment))
    if set(overrides) != {"data"}:
        raise ConfigError(
            f"{args.command} takes --set data.FIELD=VALUE only (the model comes from the checkpoint), "
            f"got {', '.join(sorted(set(overrides) - {'data'}))}"
        )
    return overrides["data"]


def _predict(args: argparse.Namespace) -> int:
    from .predict_shards import PREDICTIONS, predict_shards

    data_overrides = _data_overrides(args)
    if args.out.endswith(".jsonl"):
        raise ConfigError(f"--out {args.out!r} looks like a file; --out is the folder that gets {PREDICTIONS}")
    summary = predict_shards(
        args.checkpoint,
        args.data,
        args.out,
        batch_size=args.batch_size or 4,
        num_workers=loader_workers(args.num_workers),
        device=args.device or "auto",
        precision=args.precision or "fp32",
        fold=args.fold,
        data_overrides=data_overrides,
    )
    if summary:
        top1 = f"; top-1 {summary['top1']:.4f}" if "top1" in summary else ""
        print(
            f"avf-train predict: {summary['clips']} clips x {summary['views_per_clip']} views = {summary['rows']} rows "
            f"in {summary['out']}{top1}",
            flush=True,
        )
    return 0


def _embed(args: argparse.Namespace) -> int:
    from .embed import run_embed

    return run_embed(args, _data_overrides(args))


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
