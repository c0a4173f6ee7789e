"""The one GPU check: every section in its own process, within one time budget, results in a folder.

    python3 tools/gpu/run.py --out DIR                 # on the GPU machine, from the repository root
    uv run python tools/gpu/run.py --dry-run --out DIR # CPU, tiny sizes, 1-2 minutes (CI runs it)

Writes ``DIR/results.jsonl`` (one JSON line per measurement, appended as it is made),
``DIR/results.md`` (the tables, with the issue's goals and pass/fail) and ``DIR/run.log`` (every
section's output). A section that runs out of memory, crashes or outlives its time writes a line
saying so and the run goes on. Each section's timeout is its own cap or what is left of
``--budget-s``, whichever is smaller; sections that no longer fit are recorded as skipped, so the
compiled steps, which come last, run only as far as the budget allows.

The dry run runs the same sections on the tiny model (and a HiCMAE-B of the tiny widths) at
batch 2 in fp32, with one compiled step traced by dynamo on the ``eager`` backend (no inductor).

Order: environment, attention, eager steps (Base, Large, Huge, HiCMAE-B at batch 32 and 164),
then (once the background ``assets`` section has written the demo inputs and shards)
``model_inputs``, SyncNet and the loader run, then the compiled steps, most important first.
Exit status 1 when a section failed (error, crash, timeout, mismatch; in the dry run also a
skip or an OOM), so CI notices a section that rotted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import BATCHES, LOG, REPO, REPORT, RESULTS, append_record, read_records

HERE = Path(__file__).resolve().parent
RESERVE_S = 10.0  # kept back for the report and the clean-up
FAILED = {"error", "crashed", "timeout", "mismatch"}


@dataclass
class Job:
    """One section process: its script, arguments, time cap and the least time worth starting it with."""

    section: str
    script: str
    argv: list[str] = field(default_factory=list)
    cap_s: float = 60.0
    min_s: float = 10.0
    needs_assets: bool = False
    config: dict[str, object] = field(default_factory=dict)
    only_with_xformers: bool = False


def step_job(model: str, batch: int, dry: bool, compiled: bool = False, attention: str = "auto") -> Job:
    argv = ["--model", model, "--batch", str(batch), "--attention", attention]
    if compiled:
        argv.append("--compile")
    if dry:
        argv += ["--steps", "2", "--warmup", "1", "--precision", "fp32"]
        if compiled:  # dynamo's tracing (where a model breaks compile) without inductor's minutes on a CPU
            argv += ["--compile-backend", "eager"]
    config = {"model": model, "batch": batch, "compiled": compiled, "attention_backend": attention}
    cap, least = (240.0, 90.0) if compiled and not dry else (90.0, 20.0)
    return Job("step", "step_bench.py", argv, cap, least, config=config)


def plan(args: argparse.Namespace) -> list[Job]:
    """The sections in the order they run (see the module docstring)."""
    dry = args.dry_run
    models = ["avfmae_pp_tiny", "hicmae_base"] if dry else args.models
    batches = [2] if dry else args.batches
    jobs = [Job("env", "env_check.py", cap_s=60.0)]
    jobs.append(Job("attention", "attention_check.py", ["--xformers-note", args.xformers_note], cap_s=90.0))
    if args.compile in ("off", "both"):
        jobs += [step_job(m, b, dry) for m in models for b in batches]
    if dry and args.compile in ("on", "both"):
        jobs.append(step_job("avfmae_pp_tiny", 2, dry, compiled=True))
    if dry:
        jobs.append(Job("inputs", "inputs_check.py", ["--batch", "2", "--batches", "1"], needs_assets=True))
        sync_args = ["--batch", "32", "--repeat", "1", "--calls", "1", "--max-frames", "30"]
        jobs.append(Job("syncnet", "syncnet_bench.py", sync_args, cap_s=120.0, needs_assets=True))
        loader_args = ["--model", "avfmae_pp_tiny", "--batch", "2", "--workers", "1", "--steps", "2"]
        loader_args += ["--log-every", "1", "--precision", "fp32", "--timeout", "150"]
        jobs.append(Job("loader", "loader_run.py", loader_args, cap_s=180.0, needs_assets=True))
    else:
        jobs.append(Job("inputs", "inputs_check.py", needs_assets=True, cap_s=90.0))
        jobs.append(Job("syncnet", "syncnet_bench.py", needs_assets=True, cap_s=120.0, min_s=30.0))
        loader_args = ["--workers", str(args.loader_workers), "--timeout", "170"]
        jobs.append(Job("loader", "loader_run.py", loader_args, cap_s=180.0, min_s=60.0, needs_assets=True))
        # the model-level effect of xformers: Base at batch 32 once more, on SDPA
        extra = step_job("avfmae_pp_base", 32, False, attention="sdpa")
        extra.only_with_xformers = True
        jobs.append(extra)
    if args.compile in ("on", "both") and not dry:
        order = [("avfmae_pp_base", 32), ("hicmae_base", 32), ("avfmae_pp_base", 164), ("hicmae_base", 164)]
        order += [(m, b) for m in ("avfmae_pp_large", "avfmae_pp_huge") for b in BATCHES]
        jobs += [step_job(m, b, False, compiled=True) for m, b in order if m in models and b in batches]
    return [j for j in jobs if j.section in args.sections]


def assets_argv(dry: bool, workers: int) -> list[str]:
    if dry:
        return ["--clips", "4", "--copies", "1", "--per-shard", "4", "--jobs", "2"]
    return ["--clips", "32", "--copies", str(max(workers, 1)), "--per-shard", "32", "--jobs", "8"]


class Runner:
    """Starts section processes with the shared arguments, environment and log, under the budget."""

    def __init__(self, args: argparse.Namespace, work: Path, env: dict[str, str]) -> None:
        self.args, self.work, self.env = args, work, env
        self.deadline = time.monotonic() + args.budget_s
        self.common = ["--out", str(args.out), "--work", str(work)]
        if args.dry_run:
            self.common.append("--dry-run")
        if args.device:
            self.common += ["--device", args.device]

    def left(self) -> float:
        return self.deadline - time.monotonic() - RESERVE_S

    def command(self, job: Job) -> list[str]:
        return [sys.executable, str(HERE / job.script), *self.common, *job.argv]

    def start(self, job: Job, log) -> subprocess.Popen:
        # a session of its own: a timeout kills the section and everything it started (the trainer,
        # its loader workers)
        return subprocess.Popen(
            self.command(job), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=self.env, start_new_session=True
        )

    def finish(self, job: Job, proc: subprocess.Popen, timeout: float, before: int, log_path: Path) -> None:
        """Wait for a section; record a timeout or a crash the section could not record itself."""
        out = self.args.out
        t = time.monotonic()
        try:
            rc = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            kill(proc)
            append_record(out, {"section": job.section, **job.config, "status": "timeout", "timeout_s": round(timeout)})
            return
        new = read_records(out)[before:]
        wrote_error = any(r.get("section") == job.section and r.get("status") in ("error", "oom") for r in new)
        if rc != 0 and not wrote_error:
            how = f"signal {-rc}" if rc < 0 else f"exit status {rc}"
            append_record(
                out,
                {"section": job.section, **job.config, "status": "crashed", "how": how, "tail": tail(log_path)},
            )
        elif rc == 0 and not new:
            append_record(out, {"section": job.section, **job.config, "status": "error", "error": "no result written"})
        print(f"== {job.section} {job.config or ''}: {time.monotonic() - t:.1f} s, status {rc}", flush=True)


def kill(proc: subprocess.Popen) -> None:
    """End a section's whole process group (it runs in a session of its own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])[-1500:]
    except OSError:
        return ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="results folder (results.jsonl, results.md, run.log)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, compile traced only (CI)")
    ap.add_argument(
        "--budget-s", type=float, default=None, help="whole run, seconds (default 480; dry run 420: a slow CI machine)"
    )
    ap.add_argument(
        "--sections",
        default="env,attention,step,inputs,syncnet,loader",
        help="comma-separated subset of env,attention,step,inputs,syncnet,loader",
    )
    ap.add_argument("--compile", choices=("off", "on", "both"), default="both", help="step configurations to run")
    ap.add_argument(
        "--models", nargs="+", default=["avfmae_pp_base", "avfmae_pp_large", "avfmae_pp_huge", "hicmae_base"]
    )
    ap.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    ap.add_argument("--loader-workers", type=int, default=12)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument(
        "--device",
        default=None,
        help="every section's device (default: cuda; cpu with --dry-run); --device cpu without --dry-run "
        "rehearses the real plan's install and code paths on a CPU (pick small --models/--batches/--sections)",
    )
    args = ap.parse_args(argv)
    args.sections = set(args.sections.split(","))
    args.xformers_note = ""  # from prepare's manifest, once the wheels are installed (main)
    if args.budget_s is None:
        args.budget_s = 420.0 if args.dry_run else 480.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    out: Path = args.out.resolve()
    args.out = out
    out.mkdir(parents=True, exist_ok=True)
    for name in (RESULTS, REPORT, LOG):
        (out / name).unlink(missing_ok=True)
    work = (args.work or Path(tempfile.mkdtemp(prefix="avf-gpu-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    append_record(out, {"section": "run", "status": "ok", "dry_run": args.dry_run, "budget_s": args.budget_s})
    if not args.dry_run:
        from carry import install_missing, python_path

        report = install_missing()
        args.xformers_note = report.get("xformers_note") or ""
        status = "error" if "error" in report else "ok"
        append_record(out, {"section": "install", "status": status, **report})
        paths = python_path(report) + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env["PYTHONPATH"] = os.pathsep.join(paths)
    runner = Runner(args, work, env)
    log_path = out / LOG
    assets_log = work / "assets.log"
    jobs = plan(args)
    assets = None
    assets_job = Job("assets", "assets.py", assets_argv(args.dry_run, args.loader_workers), cap_s=240.0)
    if any(j.needs_assets for j in jobs):
        with open(assets_log, "a") as fh:
            assets = runner.start(assets_job, fh)
    assets_state: str | None = None
    with open(log_path, "a", buffering=1) as log:
        for job in jobs:
            if job.only_with_xformers and not any(
                r.get("section") == "env" and r.get("xformers_probe") == "ok" for r in read_records(out)
            ):
                continue
            if job.needs_assets and assets_state is None:
                assets_state = wait_assets(runner, assets, assets_job, assets_log, log)
            if job.needs_assets and assets_state != "ok":
                append_record(out, {"section": job.section, **job.config, "status": "skipped", "why": assets_state})
                continue
            timeout = min(job.cap_s, runner.left())
            if timeout < job.min_s:
                why = f"budget: {max(runner.left(), 0):.0f} s left, needs {job.min_s:.0f}"
                append_record(out, {"section": job.section, **job.config, "status": "skipped", "why": why})
                continue
            log.write(f"\n== {job.section} {job.config or ''} (timeout {timeout:.0f} s)\n")
            log.flush()
            before = len(read_records(out))
            proc = runner.start(job, log)
            runner.finish(job, proc, timeout, before, log_path)
        if assets is not None and assets.poll() is None:
            kill(assets)
        if assets_log.exists():
            log.write("\n== assets (background)\n" + assets_log.read_text(errors="replace"))
    append_record(
        out, {"section": "run", "status": "ok", "kind": "end", "wall_s": round(time.monotonic() - t_start, 1)}
    )
    from report import write_report

    write_report(out)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    failed = failures(read_records(out), args.dry_run)
    for rec in failed:
        print(
            f"FAILED: {rec.get('section')} {rec.get('model', '')} {rec.get('status')}: "
            f"{rec.get('error') or rec.get('why') or rec.get('how') or ''}",
            file=sys.stderr,
        )
    print(f"results: {out / REPORT}", flush=True)
    return 1 if failed else 0


def wait_assets(runner: Runner, proc: subprocess.Popen | None, job: Job, log_path: Path, log) -> str:
    """Wait for the background assets section; 'ok' or why the sections that need it are skipped."""
    if proc is None:
        return "assets not started"
    try:
        rc = proc.wait(timeout=max(min(job.cap_s, runner.left()), 1.0))
    except subprocess.TimeoutExpired:
        kill(proc)
        append_record(runner.args.out, {"section": "assets", "status": "timeout"})
        return "assets timed out"
    ready = (runner.work / "assets.json").exists()
    if rc != 0 or not ready:
        if not any(r.get("section") == "assets" for r in read_records(runner.args.out)):
            tail_text = tail(log_path)
            append_record(
                runner.args.out, {"section": "assets", "status": "crashed", "how": f"rc {rc}", "tail": tail_text}
            )
        return f"assets failed (rc {rc})"
    return "ok"


def failures(records: list[dict], dry_run: bool) -> list[dict]:
    """Records that fail the run: broken sections always; in the dry run also skips and OOMs,
    which on a CPU with tiny sizes mean the plan or the sizes are wrong."""
    bad = FAILED | ({"skipped", "oom"} if dry_run else set())
    return [r for r in records if r.get("status") in bad]


if __name__ == "__main__":
    raise SystemExit(main())
