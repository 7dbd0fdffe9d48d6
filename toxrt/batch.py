"""Many recordings, one task each: plan the tasks, run one, and tabulate the results.

``toxrt batch PARAMS.toml... [--videos GLOB]`` turns parameter files (and, with ``--videos``, one
template applied to every matching video) into :class:`Job` s. :func:`run_job` tracks one job's
video and, when asked, refines it; it runs wherever it is called, in a Dask worker
(``toxrt.batch_cluster``) or in a plain loop, and returns a plain result row, never raising for a
bad video. The rows become a table (console and CSV).

A job writes its session straight into its session folder (``<output_dir>/session_<name>``), never
into a worker's scratch space; on a cluster every worker must therefore see the same paths as
the machine that plans the batch (shared storage). A job whose session is already finished is
skipped, so re-running a batch resumes it.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import json
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .config import Config, load_config
from .errors import ConfigError, ToxrtError
from .io.atomic import atomic_open
from .io.layout import OFFLINE_DIR, SESSION_JSON, session_folder, session_name, trajectories_npy

log = logging.getLogger(__name__)

COLUMNS = ("video", "status", "frames", "fps", "estimated_accuracy", "seconds", "session", "message")
DONE, SKIPPED, FAILED = "done", "skipped", "failed"
PROGRESS_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Job:
    """One video to track: its label in the table, its checked configuration and session folder."""

    video: str
    config: Config
    session: str


def plan_jobs(params: Sequence[str], videos: str | None = None,
              output_dir: str | None = None) -> tuple[list[Job], list[dict]]:
    """Jobs from parameter files; rows of the files that failed to load (bad parameters).

    Without ``videos`` each parameter file is one job (its own ``video_paths``). With ``videos``, a
    glob, the single parameter file is a template and each matching video one job, named after the
    video. ``output_dir`` replaces every job's ``output_dir``. Two jobs writing one session folder,
    a glob matching nothing or a template that does not load are errors (ConfigError).
    """
    if not params:
        raise ConfigError("toxrt batch: give at least one parameter file")
    overrides = {"output_dir": str(Path(output_dir).resolve())} if output_dir else {}
    jobs: list[Job] = []
    failed: list[dict] = []
    if videos:
        if len(params) != 1:
            raise ConfigError(f"--videos {videos}: give exactly one template parameter file, got {len(params)}")
        matches = sorted(glob.glob(videos, recursive=True))
        if not matches:
            raise ConfigError(f"--videos {videos}: no video matches")
        template = load_config(params[0], overrides)  # a bad template fails the whole batch at once
        paths = [str(Path(video).resolve()) for video in matches]
        for path, name in zip(paths, session_names(paths)):
            config = _offline(dataclasses.replace(template, video_paths=[path], name=name), params[0])
            jobs.append(Job(path, config, str(session_folder(config))))
    else:
        for path in params:
            try:
                config = _offline(load_config(path, overrides), path)
            except ToxrtError as exc:
                failed.append(failed_row(path, str(exc)))
                continue
            jobs.append(Job(", ".join(config.video_paths) or path, config, str(session_folder(config))))
    _check_distinct(jobs)
    return jobs, failed


def _offline(config: Config, params: str) -> Config:
    """Recordings only; no publishing or marker sockets (tasks sharing a machine would fight over
    the ports, and nobody listens to a batch)."""
    from .config_checks import is_live_spec

    live = [v for v in config.video_paths if is_live_spec(v)]
    if live:
        raise ConfigError(f"{params}: video_paths: {live[0]} is a live source; toxrt batch tracks "
                          "recordings (toxrt rig tracks cameras)")
    streaming = dataclasses.replace(config.streaming, publish_address="", marker_address="")
    return dataclasses.replace(config, streaming=streaming)


def session_names(paths: Sequence[str]) -> list[str]:
    """Each video's file name without suffix, or, when two share one (day1/cam.avi, day2/cam.avi),
    its path below the videos' common folder with ``_`` for ``/`` (day1_cam, day2_cam)."""
    stems = [session_name(Config(video_paths=[p])) for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(os.path.commonpath(paths)) if len(paths) > 1 else Path(paths[0]).parent
    return [session_name(Config(video_paths=[str(Path(p).relative_to(root).with_suffix("")).replace(os.sep, "_")]))
            for p in paths]


def _check_distinct(jobs: Iterable[Job]) -> None:
    seen: dict[str, str] = {}
    for job in jobs:
        if job.session in seen:
            raise ConfigError(f"{job.video} and {seen[job.session]} would both write {job.session}; "
                              "give them different names or output folders")
        seen[job.session] = job.video


# ---------------------------------------------------------------------------------------------
# Finished sessions (what makes a re-run resume)
# ---------------------------------------------------------------------------------------------

def tracked_summary(folder: Path) -> dict | None:
    """The session's summary when it was tracked to the end and its trajectories exist, else None.

    A session stopped by hand (``interrupted``) raises SessionError: it is kept, not re-tracked.
    """
    from .errors import SessionError

    try:
        meta = json.loads((folder / SESSION_JSON).read_text())
    except (OSError, ValueError):
        return None
    summary = meta.get("summary") or {}
    if not meta.get("complete") or "frames" not in summary:
        return None  # the recording or the end-of-session fusion did not finish (crash, killed worker)
    if summary.get("interrupted"):
        raise SessionError(f"{folder}: holds a session that was stopped before the end; "
                           "move it away to track the video again")
    outputs = summary.get("outputs") or []
    return summary if outputs and all(Path(p).exists() for p in outputs) else None


def refined_summary(folder: Path) -> dict | None:
    """offline/refine_summary.json when the current trajectories are the refined ones, else None."""
    try:
        summary = json.loads((folder / OFFLINE_DIR / "refine_summary.json").read_text())
        data = np.load(trajectories_npy(folder), allow_pickle=True).item()
    except (OSError, ValueError, EOFError, AttributeError):
        return None
    if summary.get("interrupted") or not isinstance(data, dict) or data.get("source") != "toxrt-refined":
        return None
    return summary


# ---------------------------------------------------------------------------------------------
# One job
# ---------------------------------------------------------------------------------------------

def run_job(job: Job, refine: bool = False, threads: int = 1,
            report: Callable[[str, int, int | None], None] | None = None) -> dict:
    """Track ``job`` (unless its session is finished), then refine it when ``refine``; a result row.

    ``threads`` caps OpenCV's, the BLAS libraries' and torch's threads for the job. ``report``
    (video, frames so far, total or None) is called about once per second while tracking. Every
    failure ends in a row with status ``failed`` and a one-line message; nothing is raised.
    """
    started = time.monotonic()
    row = {"video": job.video, "session": job.session}
    folder = Path(job.session)
    stage = ""
    try:
        with limited_threads(threads):
            summary = tracked_summary(folder)
            worked = summary is None
            if summary is None:
                summary = _track(job, report)
            refined = refined_summary(folder) if refine else None
            if refine and refined is None:
                stage = "tracked; refine failed: "  # the tracked session stays; a re-run refines it
                refined = _refine(folder, threads)
                worked = True
        row.update(status=DONE if worked else SKIPPED, frames=summary.get("frames"), fps=summary.get("fps"),
                   estimated_accuracy=_accuracy(summary, refined),
                   message=_notes(summary, refined))
    except Exception as exc:  # one bad video must not stop the batch; its row says why
        if not isinstance(exc, ToxrtError):
            log.exception("%s failed", job.video)
        # The host tells a lab which worker could not read a file (shared storage not mounted?)
        row.update(failed_row(job.video, f"{stage}{one_line(exc)} (on {socket.gethostname()})", job.session))
    row["seconds"] = time.monotonic() - started
    return row


def _track(job: Job, report) -> dict:
    from .tracking import run_tracking
    from .sources import open_source

    on_frame = None
    if report is not None:
        source = open_source(job.config)  # only for the frame count shown in the progress
        total = source.n_frames
        source.close()
        on_frame = _Throttled(lambda n: report(job.video, n, total), PROGRESS_INTERVAL_S)
    # An unfinished folder is what a killed worker left behind: it is tracked again from the start.
    summary = run_tracking(job.config, progress=False, overwrite=True, on_frame=on_frame)
    if on_frame is not None:
        on_frame.flush()
    return summary


def _refine(folder: Path, threads: int) -> dict:
    try:
        from .offline.refine import refine_config, refine_session
    except ImportError as exc:
        raise ToxrtError(f"--refine needs torch: pip install torch==2.13.0 ({exc})") from None
    # The session's own [refine] table; only the thread count is the batch's.
    return refine_session(folder, refine_config(folder, {"threads": threads}), progress=False).as_dict()


class _Throttled:
    """A per-frame callback that passes the frame count on at most every ``interval_s``."""

    def __init__(self, send: Callable[[int], None], interval_s: float, clock=time.monotonic):
        self.send, self.interval_s, self.clock = send, interval_s, clock
        self.frames, self.last = 0, clock()

    def __call__(self, _result: Any) -> None:
        self.frames += 1
        if self.clock() - self.last >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        self.last = self.clock()
        self.send(self.frames)


class limited_threads:
    """Cap OpenCV, BLAS/OpenMP (threadpoolctl) and torch at ``n`` threads inside the block.

    Tasks that share a machine each get their share of its cores instead of one pool per library
    per task, which would oversubscribe the cores many times over.
    """

    def __init__(self, n: int):
        self.n = max(1, int(n))

    def __enter__(self) -> "limited_threads":
        import cv2
        from threadpoolctl import threadpool_limits

        self._cv2 = cv2.getNumThreads()
        cv2.setNumThreads(self.n)
        self._pools = threadpool_limits(limits=self.n)
        return self

    def __exit__(self, *exc: object) -> None:
        import cv2

        cv2.setNumThreads(self._cv2)
        self._pools.restore_original_limits()


def _accuracy(summary: dict, refined: dict | None) -> float:
    """The refined estimate when refined, else the live one (the live stage's own estimate when it
    reports one, else its mean identity probability)."""
    if refined is not None:
        return refined.get("estimated_accuracy", math.nan)
    return summary.get("estimated_accuracy", summary.get("mean_identity_probability", math.nan))


def _notes(summary: dict, refined: dict | None) -> str:
    notes = []
    if summary.get("stopped_early_at") is not None:
        notes.append(f"the video broke off at frame {summary['stopped_early_at']}")
    if summary.get("frame_errors"):
        notes.append(f"{summary['frame_errors']} frames failed")
    notes += (refined or {}).get("warnings", [])[:1]
    return "; ".join(notes)


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message (ToxrtError) or its type and first line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, ToxrtError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def failed_row(video: str, message: str, session: str = "") -> dict:
    return {"video": video, "status": FAILED, "frames": None, "fps": None, "estimated_accuracy": None,
            "session": session, "message": message or "failed"}


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

def write_table(rows: Sequence[dict], path: Path) -> None:
    """The result rows as CSV (``COLUMNS``), written atomically."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: _csv_value(row.get(k)) for k in COLUMNS} for row in rows)
    except OSError as exc:
        raise ToxrtError(f"{path}: cannot write the results table: {exc.strerror}") from None


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


def table_lines(rows: Sequence[dict]) -> list[str]:
    """The result rows for the console, then one line of totals."""
    def num(value: Any, fmt: str) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

    lines = [f"{'video':<32} {'status':<8} {'frames':>7} {'fps':>7} {'accuracy':>8} {'time s':>7}  session / message"]
    for row in rows:
        video = row["video"] if len(row["video"]) <= 32 else "..." + row["video"][-29:]
        where = row.get("message") if row["status"] == FAILED else row.get("session", "")
        if row["status"] != FAILED and row.get("message"):
            where += f"  ({row['message']})"
        lines.append(f"{video:<32} {row['status']:<8} {num(row.get('frames'), 'd'):>7} {num(row.get('fps'), '.1f'):>7} "
                     f"{num(row.get('estimated_accuracy'), '.4f'):>8} {num(row.get('seconds'), '.1f'):>7}  {where}")
    counts = {s: sum(r["status"] == s for r in rows) for s in (DONE, SKIPPED, FAILED)}
    lines.append(f"{len(rows)} videos: {counts[DONE]} done, {counts[SKIPPED]} skipped (already finished), "
                 f"{counts[FAILED]} failed")
    return lines
