"""Command line of avf-data: ``build``, ``import`` and ``inspect``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BUILD_HELP = """\
Curate raw talking-face videos into WebDataset shards (paper §4.1, five stages):

  decode   one pass, any frame rate (also variable) to 25 fps by timestamp, audio 16 kHz mono
{stages}

Every stage has a mode in its config section: off | measure (record scores, keep the clip
and list the failing code in its "flags") | enforce (reject). Every second of every input
ends up in an accepted clip (manifest.jsonl) or a reject row with a stage, a reason code
(face.several, sync.offset, decode.corrupt, ...) and a reason (rejects.jsonl). Re-running
into the same --out resumes; a folder that is not an avf-data output is refused.

outputs in DIR:
  shards/shard-NNNNNN.tar
                   WebDataset shards of ~output.shard_size (512 MB), numbered without gaps
                   (shard-{000000..000123}.tar; the summary prints the pattern), each with
                   shard-NNNNNN.idx.json (sample count and offsets); one sample per clip:
                   <key>.mp4 (25 fps face crop), <key>.wav (16 kHz mono), <key>.json
                   (source, start, end, boxes, scores, sync, blur, ...)
  manifest.jsonl   accepted clips, in shard order      rejects.jsonl   rejected inputs/segments/gaps
  stats.json       per-stage seconds in/out, rejects by code, CPU time, peak worker memory
  report.md        warnings, stages, reject codes, per-input table, contact_sheet.png

examples:
  avf-data build --demo --out demo-out
  avf-data build videos/ more.mp4 list.txt --out corpus --workers 8
  avf-data build videos/ --out corpus --engine ray --ray-address auto --config curation.yaml
  avf-data build videos/ --out corpus --syncnet-weights syncnet_v2.model

config (YAML, only what changes; sections: {sections}):
  crop: {out_size: 224, margin: 1.6}
  quality: {mode: measure}
  sync: {require_syncnet: true, weights: /models/syncnet_v2.model}
  silence: {min_clip_seconds: 1.5, max_clip_seconds: 10}
  output: {shard_size: 1GB, inputs_per_task: 16}

tasks and shards: the pending inputs, in order, are cut into tasks of
  min(output.inputs_per_task, ceil(pending / workers)) inputs (default 16); a worker curates
  a task into segments/<task-id>.tar and the driver logs it in build.jsonl (from then on its
  inputs are done), then packs the clips, in input order, into the shard being filled, which
  is sealed when the next clip would not fit: the same inputs give the same shards whatever
  the worker count. Interrupted (even kill -9)? Run the same command again: finished tasks
  are kept, the rest is redone (keys never change), a half-filled shard is cut back to what
  the log says and filled on. A task whose worker keeps crashing is split and its inputs
  retried one by one. Memory of the driver does not grow with the corpus.
"""


# what `pip install avf-data` lacks and `avf-data[curate]` brings
CURATION_MODULES = {
    "cv2",
    "scipy",
    "librosa",
    "scenedetect",
    "dlib",
    "onnxruntime",
    "skimage",
    "PIL",
    "torch",
}


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value after --config (repeatable), e.g. --set crop.out_size=224 "
        "--set quality.mode=measure",
    )


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=_out_dir, metavar="DIR", help="output folder (created; reruns resume)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="parallel worker processes (default: CPU count; 0 = run inline)",
    )
    p.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="local process pool (default) or Ray tasks"
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join (e.g. 'auto'); default starts a local Ray with --workers CPUs",
    )
    p.add_argument("--config", type=Path, default=None, metavar="FILE.yaml", help="stage options (YAML)")
    _add_set(p)
    p.add_argument(
        "--syncnet-weights",
        default=None,
        metavar="PATH",
        help="SyncNet v2 weights (syncnet_v2.model; also sync.weights in the config or the "
        "AVF_SYNCNET_WEIGHTS variable). Without weights sync is measured, not enforced",
    )
    p.add_argument(
        "--require-syncnet",
        action="store_true",
        help="fail at start unless SyncNet weights are usable (production corpora)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _importer_doc() -> str:
    """The importer's docstring, read without importing it (it needs the curation extra)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("avf_data.importer")
    try:
        with open(spec.origin, encoding="utf-8") as fh:  # type: ignore[union-attr]
            return ast.get_docstring(ast.parse(fh.read())) or ""
    except (OSError, AttributeError, TypeError):  # pragma: no cover
        return "labelled CSV -> labelled shards"


def stage_lines() -> str:
    """The stages of the registry, one per line with its codes (the --help of build)."""
    import textwrap

    try:
        from .stages import registry
    except ModuleNotFoundError as exc:  # the light install: no detectors, no stage list
        return f"  (the stages need the curation extra, which this install lacks: no module {exc.name!r})"
    lines = []
    for cls in registry.STAGES:
        text = f"{cls.summary}; codes: {', '.join(cls.codes)}"
        wrapped = textwrap.wrap(text, 80)
        lines.append(f"  {cls.name:8} {wrapped[0]}")
        lines += [f"           {more}" for more in wrapped[1:]]
    return "\n".join(lines)


def section_names() -> str:
    try:
        from .stages import registry
    except ModuleNotFoundError:
        return "media, <one per stage>, output"
    return " ".join(["media", *registry.names(), "output"])


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avf-data",
        description="avf-data: curate talking-face video corpora into WebDataset shards.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run 'avf-data build --help' for the pipeline and its outputs",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{build,import,inspect,sync}")

    b = sub.add_parser(
        "build",
        help="curate videos into shards",
        description=BUILD_HELP.replace("{stages}", stage_lines()).replace("{sections}", section_names()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="video files, folders (searched recursively) or .txt/.lst files listing paths",
    )
    _add_run_args(b)
    b.add_argument(
        "--demo", action="store_true", help="also write the built-in demo inputs to DIR/demo-inputs and curate them"
    )

    i = sub.add_parser(
        "import",
        help="labelled CSV -> labelled shards (for avf-train / avf-eval)",
        description=_importer_doc(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("csv", type=Path, metavar="CSV", help="path,label[,subject,fold][,targets...]")
    _add_run_args(i)
    i.add_argument(
        "--no-curate", action="store_true", help="no detection: resample and centre-crop/resize each whole clip"
    )
    i.add_argument(
        "--strict", action="store_true", help="curate with the full build options instead of the lenient ones"
    )
    label_map = i.add_mutually_exclusive_group()
    label_map.add_argument(
        "--protocol",
        default=None,
        metavar="NAME",
        help="number classes in the order of this avf-eval protocol (`avf-eval protocols`), "
        "accepting the dataset's native codes (CREMA-D ANG, IEMOCAP exc, ...); use the "
        "same protocol for every fold",
    )
    label_map.add_argument(
        "--classes",
        default=None,
        metavar="FILE|NAMES",
        help="class order from FILE (a previous import's classes.json, a JSON/YAML list, one "
        "name per line) or comma-separated NAMES (default: sorted labels of this CSV, "
        "with a warning)",
    )

    n = sub.add_parser(
        "inspect",
        help="summarise a curated folder or shards (from their indexes; --verify reads every byte)",
        description="Summarise a curated folder or a set of shards. By default only the shard "
        "indexes (.idx.json), stats.json and classes.json are read, so a corpus of any size is "
        "summarised in a moment; --verify reads every sample (keys, members, duplicates, labels) "
        "and checks it against the indexes and the manifest.",
    )
    n.add_argument("path", type=Path, metavar="DIR", help="output folder of build/import, or shards")
    n.add_argument("--verify", action="store_true", help="read every sample and check it against the indexes")
    n.add_argument("--json", action="store_true", help="print JSON instead of text")

    y = sub.add_parser(
        "sync",
        help="enforce SyncNet sync on a finished build (batched, GPU-ready, resumable)",
        description=SYNC_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    y.add_argument("out", type=Path, metavar="DIR", help="output folder of a finished `avf-data build`")
    y.add_argument(
        "--syncnet-weights",
        default=None,
        metavar="PATH",
        help="syncnet_v2.model (else sync.weights in the config, else $AVF_SYNCNET_WEIGHTS)",
    )
    y.add_argument("--device", default=None, metavar="DEV", help="cpu (default) or cuda[:N]; bf16 on CUDA")
    y.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="SyncNet windows per forward pass (default sync.batch_size, 32; e.g. 512 on a GPU)",
    )
    y.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE.yaml",
        help="thresholds etc. from this file's sync section (default: DIR/config.yaml of the build)",
    )
    _add_set(y)
    y.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process (all cores or the GPU); ray: a pool of scorer actors, one per GPU "
        "with --device cuda, else --workers one-CPU actors",
    )
    y.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="scorer processes (local; default: this process, all cores or the GPU) or Ray actors (default: one "
        "per GPU, or one)",
    )
    y.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join (its nodes must see DIR and the source videos)",
    )
    y.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        if args.command == "build":
            return _build(args)
        if args.command == "import":
            return _import(args)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "sync":
            return _sync(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"avf-data: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in CURATION_MODULES:
            raise
        print(
            f"avf-data: error: `avf-data {args.command}` needs the curation stack, which this install lacks "
            f"(no module {exc.name!r}): pip install 'avf-data[curate]'",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:  # disk full, read-only file system, permissions: the user's to fix
        import errno

        from .tars import ShardReadError

        if isinstance(exc, ShardReadError):  # a broken or hostile shard: its line names the member
            print(f"avf-data: error: {exc}", file=sys.stderr)
            return 2
        if exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(
            f"avf-data: error: {exc.strerror or exc}{where}; fix it and run the same command again "
            "(finished work is kept and resumed)",
            file=sys.stderr,
        )
        return 2
    return 1


def _load_cfg(args):
    from .config import load_config

    return load_config(args.config, sets=args.set)


def _summary(stats: dict, out: Path) -> None:
    from .store.stats import sync_banner

    top = ", ".join(f"{code} {v['seconds']:.1f} s" for code, v in list(stats["rejects_by_code"].items())[:3])
    run = stats["run"]
    print(
        f"{stats['inputs']} inputs -> {stats['clips']} clips: kept {stats['seconds_accepted']:.1f} s of "
        f"{stats['seconds_in']:.1f} s ({stats['seconds_accepted'] / max(stats['seconds_in'], 1e-9):.0%})"
        + (f"; top rejects: {top}" if top else "")
        + f"; sync: {stats['sync_scorer']}"
    )
    cpu = run.get("cpu_seconds_all_processes")
    if cpu:
        print(
            f"CPU: {cpu['total']:.1f} s in all processes (driver {cpu['driver']:.1f}, worker start-up "
            f"{cpu['worker_start_up']:.1f}, workers {cpu['workers']:.1f}, of which the inputs themselves "
            f"{cpu['inputs']:.1f}); {cpu['frames_per_cpu_second_all_processes']:.0f} frames per CPU-second in all, "
            f"{run.get('frames_per_cpu_second', 0):.0f} in the stages"
        )
    for line in stats.get("warnings", []):
        print(f"avf-data: warning: {line}", file=sys.stderr)
    for line in stats["run"].get("inputs_skipped", [])[:10]:
        print(f"avf-data: note: {line}", file=sys.stderr)
    banner = sync_banner(stats)
    if banner:
        print(f"avf-data: warning: {banner}", file=sys.stderr)
    shards = stats.get("shards", {})
    print(
        f"outputs in {out}: {shards.get('count', 0)} shards ({shards.get('bytes', 0) / 1e6:.1f} MB) "
        f"'{out / shards.get('pattern', 'shards/*.tar')}', manifest.jsonl, rejects.jsonl, stats.json, report.md"
    )


def _warn(line: str) -> None:
    print(f"avf-data: warning: {line}", file=sys.stderr)


def _out_dir(text: str) -> Path:
    """--out: a folder path; an empty one would silently mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; name an output folder")
    return Path(text)


def _check_inputs(inputs: list[str]) -> None:
    """A path named on the command line that does not exist is a typo: stop before any work
    (paths inside a .txt list that are missing stay reject rows)."""
    import os

    for p in inputs:
        if not os.path.lexists(p):
            raise ValueError(f"input {p!r} does not exist")


def _check_ray(args) -> None:
    """``--ray-address`` checked first, before models load or anything is written: a cluster
    that does not answer is a one-line error within seconds (``ray.init`` would retry for
    20 s to minutes)."""
    if args.engine == "ray" and args.ray_address:
        from .engines import check_ray_address

        check_ray_address(args.ray_address)


def _build(args) -> int:
    from .build import build, check_sync_setup, resolve_weights
    from .store.folder import check_out

    _check_ray(args)
    cfg = _load_cfg(args)
    if args.require_syncnet:
        cfg.sync.require_syncnet = True
    inputs = list(args.inputs)
    _check_inputs(inputs)
    check_sync_setup(resolve_weights(args.syncnet_weights, cfg), cfg)
    check_out(args.out)
    if args.demo:
        from .demo import make_demo_inputs

        demo = make_demo_inputs(args.out / "demo-inputs")
        inputs += [str(p) for p in demo.values()]
    if not inputs:
        raise ValueError("give INPUT paths or --demo")
    stats = build(
        inputs,
        args.out,
        cfg,
        workers=args.workers,
        engine=args.engine,
        ray_address=args.ray_address,
        weights=resolve_weights(args.syncnet_weights, cfg),
        progress=not args.no_progress,
        warn=_warn,
    )
    _summary(stats, args.out)
    return 0


def _import(args) -> int:
    from .importer import import_csv, read_class_list

    _check_ray(args)
    cfg = _load_cfg(args)
    classes = read_class_list(args.classes) if args.classes else None
    stats = import_csv(
        args.csv,
        args.out,
        cfg,
        curate=not args.no_curate,
        strict=args.strict,
        classes=classes,
        protocol=args.protocol,
        workers=args.workers,
        engine=args.engine,
        ray_address=args.ray_address,
        weights=args.syncnet_weights,
        progress=not args.no_progress,
    )
    _summary(stats, args.out)
    print(stats["csv"]["line"])
    print(f"classes ({stats['label_map']['source']}): {stats['classes']}")
    for warning in stats["import_warnings"]:
        print(f"avf-data import: warning: {warning}", file=sys.stderr)
    return 0


def _inspect(args) -> int:
    from .inspect_cmd import format_summary, summarize

    info = summarize(args.path, verify=args.verify)
    print(json.dumps(info, indent=2) if args.json else format_summary(info))
    if info.get("problems"):
        return 1
    return 0 if info["samples"] or (args.path / "stats.json").exists() else 1


SYNC_HELP = """\
Score every clip of a finished build with SyncNet v2 and enforce sync: clips with
|offset| > sync.max_offset_frames (3 frames = 120 ms) or confidence < sync.min_confidence_syncnet
(3.0) move to rejects.jsonl (stage sync, code sync.offset / sync.confidence / sync.unmeasurable,
with their scores); shards are rewritten atomically; manifest.jsonl, rejects.jsonl, stats.json and
report.md are regenerated. SyncNet sees the reference pipeline's crop (face box + chin, per-frame
size median-filtered over 13 frames) cut from the source video at source resolution, using the face
boxes stored in each sample; samples without them (older builds) or whose source is gone are scored
on their 160 px crop, and say so. Interrupted (even kill -9)? Run the same command again: finished
shards are kept (DIR/sync.jsonl), no clip is lost or duplicated.

weights: syncnet_v2.model is the authors' release with joonson/syncnet_python (its
download_model.sh fetches data/syncnet_v2.model, about 52 MiB: 13.6 M float32 parameters). Give it
with --syncnet-weights, the config key sync.weights, or AVF_SYNCNET_WEIGHTS (in that order). It is
loaded with torch.load(weights_only=True) and checked key by key against the official layout.

examples:
  avf-data build videos/ --out corpus            # on CPUs, no weights: sync measured only
  avf-data sync corpus --syncnet-weights syncnet_v2.model --device cuda --batch-size 512
  avf-data sync corpus --engine ray --ray-address auto --device cuda   # one actor per GPU
"""


def _sync(args) -> int:
    from .sync_pass import run_sync_pass

    _check_ray(args)
    stats = run_sync_pass(
        args.out,
        args.syncnet_weights,
        config=args.config,
        sets=args.set,
        device=args.device,
        batch_size=args.batch_size,
        engine=args.engine,
        workers=args.workers,
        ray_address=args.ray_address,
        progress=not args.no_progress,
    )
    p = stats["sync_pass"]
    print(
        f"sync pass: {p['kept'] + p['rejected']} clips judged by SyncNet: kept {p['kept']}, rejected "
        f"{p['rejected']} ({', '.join(f'{k} {v}' for k, v in sorted(p['by_code'].items())) or 'none'}); "
        f"{p['clips_scored']} scored in this run at {p['frames_per_second']:.1f} frames/s"
    )
    print(
        f"now {stats['clips']} clips, {stats['seconds_accepted']:.1f} s of {stats['seconds_in']:.1f} s; "
        f"outputs in {args.out}: shards/, manifest.jsonl, rejects.jsonl, stats.json, report.md, sync.jsonl"
    )
    if (stats.get("sync_expert") or {}).get("warning"):
        print(f"avf-data: warning: {stats['sync_expert']['warning']}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
