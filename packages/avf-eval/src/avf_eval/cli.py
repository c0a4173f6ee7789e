"""``avf-eval``: score predictions against the paper's protocols, write reports, predict one video.

Each subcommand is a thin shell around a library function, so everything the CLI does can
be done from Python too. Errors in user input (unknown protocol, malformed predictions
file, a wrong flag) print one line ``avf-eval: error: ...`` and exit with status 2 instead
of a traceback.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from typing import NoReturn

DESCRIPTION = textwrap.dedent(
    """\
    Evaluate emotion-recognition models the way the AVF-MAE++ paper does.

    typical session:
      avf-eval protocols                                   # the 17 benchmarks, folds, metrics
      avf-eval splits --protocol ravdess --metadata meta.csv --out splits/
      avf-eval score  --protocol dfew --predictions run/fold*.jsonl
      avf-eval report --protocol dfew --predictions run/fold*.jsonl --out report/
      avf-eval predict clip.mp4 --checkpoint RUN/checkpoint # emotion probabilities for a video

    Predictions files are JSONL (or CSV), one row per view of a clip:
      {"key": "0001", "video": "0001", "view": 0, "fold": 1, "epoch": 99,
       "label": 3, "logits": [0.1, -1.2, 2.3, 0.0, 0.4, -0.3, 1.1]}
    Views of one video (same "video") are merged: softmax per view, mean, argmax.
    Regression rows carry "label": [a, v, d] and "prediction": [a, v, d] (raw outputs, averaged).
    See the avf-eval README for every field.
    """
)

SELECTION_HELP = (
    "by default each fold is scored at its LAST epoch (no test labels used to choose). "
    "--legacy-best-epoch-on-test instead picks, per fold, the epoch with the best test score, "
    "as the official HiCMAE/AVF-MAE++ code does; that is optimistic and only for reproducing published numbers"
)


def _add_scoring_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--protocol",
        "-p",
        required=True,
        help="protocol name, see `avf-eval protocols` (e.g. mafw-11, dfew, werewolf-xl)",
    )
    parser.add_argument(
        "--predictions",
        "-i",
        required=True,
        nargs="+",
        metavar="FILE",
        help="one or more predictions files (.jsonl or .csv); folds may be spread over files",
    )
    parser.add_argument("--legacy-best-epoch-on-test", action="store_true", help=SELECTION_HELP)


class _Parser(argparse.ArgumentParser):
    """argparse with the avf error contract: one line ``avf-eval: error: ...``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"avf-eval: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="avf-eval", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    score = commands.add_parser(
        "score",
        help="score predictions; print ours beside the paper's numbers",
        description="Score predictions under a protocol and print a table with the paper's "
        "AVF-MAE++ (B/L/H) and HiCMAE-B numbers beside ours (all in percent).",
    )
    _add_scoring_args(score)
    score.add_argument(
        "--format", choices=["text", "markdown", "json"], default="text", help="output format (default: text)"
    )
    score.add_argument("--no-folds", action="store_true", help="omit the per-fold table")
    score.set_defaults(run=_cmd_score)

    report = commands.add_parser(
        "report",
        help="write a Markdown/HTML report with confusion matrices",
        description="Write report.md / report.html and confusion-matrix PNGs into a directory.",
    )
    _add_scoring_args(report)
    report.add_argument("--out", "-o", required=True, help="output directory (created)")
    report.add_argument(
        "--format", choices=["md", "html", "both"], default="both", help="report format (default: both)"
    )
    report.add_argument("--title", help="report title")
    report.set_defaults(run=_cmd_report)

    protocols = commands.add_parser(
        "protocols",
        help="list the benchmark protocols",
        description="List the registered protocols; with a name, show one in full.",
    )
    protocols.add_argument("name", nargs="?", help="show one protocol in detail")
    protocols.set_defaults(run=_cmd_protocols)

    splits = commands.add_parser(
        "splits",
        help="make subject/session-independent folds from a metadata CSV",
        description="Cut a metadata CSV (one row per clip: key, path, subject/session, label, ...) "
        "into the protocol's folds; writes foldNN/train.csv and foldNN/test.csv with a "
        "'label_id' column (the protocol's class index) and relative paths made "
        "absolute, so each file feeds `avf-data import FILE --protocol NAME` directly.",
    )
    splits.add_argument("--protocol", "-p", required=True)
    splits.add_argument(
        "--metadata", "-m", required=True, help="CSV with a 'key' column and the protocol's group column"
    )
    splits.add_argument("--out", "-o", required=True, help="output directory")
    splits.add_argument("--key-column", default="key")
    splits.add_argument(
        "--label-column",
        default="label",
        help="raw label column; mapped to 'label_id' with the protocol's merges (rows of dropped labels are removed)",
    )
    splits.add_argument("--seed", type=int, help="shuffle groups with this seed instead of the contiguous sorted cut")
    splits.add_argument(
        "--path-column",
        default="path",
        help="video path column; relative paths are resolved against the metadata CSV's folder (default: path)",
    )
    splits.set_defaults(run=_cmd_splits)

    predict = commands.add_parser(
        "predict",
        help="emotion probabilities for one raw video",
        description="Curate a raw video with avf-data's stages (scene cuts, face check, silence "
        "split, RetinaFace crop), run an avf-train checkpoint on every clip and print "
        "the emotion probabilities per clip and for the whole video. "
        "Needs the `predict` extra (avf-data, avf-models, avf-train).",
    )
    predict.add_argument("video", help="path to a video file with an audio track")
    predict.add_argument(
        "--checkpoint",
        "-c",
        required=True,
        help="avf-train checkpoint: file, RUN/checkpoint or run folder (or an exported file)",
    )
    predict.add_argument(
        "--protocol", "-p", help="name the outputs with this protocol's classes when the checkpoint has no names"
    )
    predict.add_argument(
        "--device", default="auto", help="auto | cpu | cuda[:N] (default auto: CUDA when there is one)"
    )
    predict.add_argument("--format", choices=["text", "json"], default="text")
    predict.set_defaults(run=_cmd_predict)
    return parser


def _cmd_score(args: argparse.Namespace) -> int:
    from .aggregation import score_protocol
    from .prediction_reader import load_predictions
    from .protocols import get_protocol
    from .table import render_json, render_markdown, render_text

    protocol = get_protocol(args.protocol)
    table = load_predictions(args.predictions, protocol)
    selection = "legacy-best-epoch-on-test" if args.legacy_best_epoch_on_test else "last"
    result = score_protocol(table, protocol, selection)
    if args.format == "json":
        print(render_json(result))
    elif args.format == "markdown":
        print(render_markdown(result, show_folds=not args.no_folds))
    else:
        print(render_text(result, show_folds=not args.no_folds))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .aggregation import score_protocol
    from .prediction_reader import load_predictions
    from .protocols import get_protocol
    from .report import write_report

    protocol = get_protocol(args.protocol)
    table = load_predictions(args.predictions, protocol)
    selection = "legacy-best-epoch-on-test" if args.legacy_best_epoch_on_test else "last"
    result = score_protocol(table, protocol, selection)
    for path in write_report(result, table, args.out, args.format, args.title):
        print(path)
    return 0


def _cmd_protocols(args: argparse.Namespace) -> int:
    from .protocols import get_protocol, load_registry
    from .protocols.describe import describe_protocol, protocol_summary_table

    if args.name:
        print(describe_protocol(get_protocol(args.name)))
    else:
        print(protocol_summary_table(load_registry().values()))
    return 0


def _cmd_splits(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pandas as pd

    from .protocols import get_protocol
    from .splits import absolute_paths, label_ids, make_folds, write_folds

    protocol = get_protocol(args.protocol)
    metadata = pd.read_csv(args.metadata, dtype=str, keep_default_na=False)
    metadata = absolute_paths(metadata, Path(args.metadata).parent, args.path_column)
    if args.label_column in metadata.columns and protocol.kind == "classification":
        metadata["label_id"] = label_ids(metadata, protocol, args.label_column)
        metadata = metadata[metadata["label_id"].notna()].reset_index(drop=True)
    folds = make_folds(metadata, protocol, key_column=args.key_column, seed=args.seed)
    write_folds(metadata, folds, args.out, key_column=args.key_column)
    for fold in folds:
        held = f" held out: {', '.join(fold.test_groups)}" if fold.test_groups else ""
        print(f"fold {fold.name}: {len(fold.train)} train, {len(fold.test)} test{held}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    try:
        from .video_emotions import predict_video, render_prediction
    except ImportError as error:
        raise UsageError(
            f"avf-eval predict needs the `predict` extra (avf-data, avf-models, avf-train): {error}"
        ) from None
    from .protocols import get_protocol

    protocol = get_protocol(args.protocol) if args.protocol else None
    result = predict_video(args.video, args.checkpoint, device=args.device, protocol=protocol)
    print(render_prediction(result, args.format))
    return 0


class UsageError(ValueError):
    """The command cannot run as asked (a missing extra); the message says what to do."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: user errors become one ``avf-eval: error:`` line and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, KeyError, FileNotFoundError) as error:  # PredictionFormatError, unknown protocol, ...
        message = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)
        print(f"avf-eval: error: {' '.join(str(message).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
