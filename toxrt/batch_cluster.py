"""``toxrt batch``: the jobs of ``toxrt.batch`` as Dask distributed tasks, one per video.

By default a ``LocalCluster`` of one single-threaded worker process per core runs them; with
``--scheduler`` an existing Dask cluster does (``dask scheduler`` / ``dask worker``, or
dask-jobqueue on SLURM; see docs/batch.md). Each task caps its libraries' threads at its share of
its machine's cores. A worker that dies mid-task (killed, out of memory, crashed) has its task
re-run on another worker by the scheduler, up to ``distributed.scheduler.allowed-failures``
times; the session it left unfinished is tracked again from the start.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from .batch import FAILED, Job, failed_row, one_line, plan_jobs, run_job, table_lines, write_table
from .errors import ConfigError, ToxrtError

log = logging.getLogger(__name__)

PROGRESS_TOPIC = "toxrt-batch-progress"
RESULTS_CSV = "batch_results.csv"


def machine_cores() -> int:
    """Cores this process may run on (the affinity mask, where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def start_cluster(scheduler: str | None = None, workers: int | None = None,
                  connect_timeout_s: float = 20.0) -> tuple[Any, Any, int]:
    """(client, local cluster or None, threads per task).

    Without ``scheduler``: a LocalCluster of ``workers`` (default: one per core) single-threaded
    worker processes, each task getting cores // workers threads. With it: a client of that
    scheduler, waiting for ``workers`` workers when given; threads per task from the workers' cores.
    """
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise ToxrtError(f"toxrt batch needs Dask: pip install 'toxrt[batch]' ({exc})") from None
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: {workers} must be 1 or more")
    if scheduler:
        try:
            client = Client(scheduler, timeout=f"{connect_timeout_s}s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ToxrtError(f"--scheduler {scheduler}: cannot connect ({one_line(exc)})") from None
        if workers:
            try:
                client.wait_for_workers(workers, timeout=connect_timeout_s * 6)
            except TimeoutError:
                client.close()
                raise ToxrtError(f"--scheduler {scheduler}: fewer than {workers} workers after "
                                 f"{connect_timeout_s * 6:g} s") from None
        return client, None, threads_per_task(client)
    n = workers or machine_cores()
    # The scheduler runs in this process: its routine INFO lines would bury the progress bar.
    logging.getLogger("distributed").setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    return Client(cluster), cluster, max(1, machine_cores() // n)


def threads_per_task(client: Any) -> int:
    """The smallest share of cores per task slot over the cluster's machines (at least 1).

    Dask runs as many tasks at once on a worker as it has threads; several workers may share a
    machine. Workers that join later get the same count.
    """
    cores = client.run(machine_cores)  # worker address -> cores of its machine
    slots: dict[str, int] = defaultdict(int)
    host_cores: dict[str, int] = {}
    for address, info in client.scheduler_info(n_workers=-1)["workers"].items():
        slots[info["host"]] += int(info["nthreads"])
        host_cores[info["host"]] = int(cores.get(address, 1))
    return min((max(1, host_cores[h] // slots[h]) for h in slots), default=1)


def report_progress(video: str, frames: int, total: int | None) -> None:
    """Send one job's frame count to the client (called inside a task about once per second)."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not inside a Dask worker
        return
    worker.log_event(PROGRESS_TOPIC, {"video": video, "frames": int(frames), "total": total})


class BatchProgress:
    """One progress bar over the frames of the whole batch, fed by the tasks' progress events.

    A task re-run after its worker died starts again from frame 0; counts are replaced, not added.
    """

    def __init__(self, jobs: Sequence[Job], enabled: bool = True):
        from tqdm import tqdm

        self.n_jobs = len(jobs)
        self.frames: dict[str, int] = {}
        self.totals: dict[str, int] = {}
        self.finished = self.failed = 0
        self._lock = threading.Lock()
        self.bar = tqdm(total=0, unit="frame", desc="batch", disable=not enabled, smoothing=0.1)
        self._postfix()

    def on_event(self, event: tuple[float, dict]) -> None:
        _, message = event
        with self._lock:
            self.frames[message["video"]] = message["frames"]
            if message.get("total"):
                self.totals[message["video"]] = message["total"]
            self._refresh()

    def job_done(self, row: dict) -> None:
        with self._lock:
            self.finished += 1
            self.failed += row["status"] == FAILED
            if row.get("frames"):
                self.frames[row["video"]] = self.totals[row["video"]] = row["frames"]
            self._refresh()

    def _refresh(self) -> None:
        self.bar.total = max(sum(self.totals.values()), sum(self.frames.values()))
        self.bar.n = sum(self.frames.values())
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"videos {self.finished}/{self.n_jobs} finished, {self.failed} failed")

    def close(self) -> None:
        self.bar.close()


def run_on_dask(jobs: Sequence[Job], client: Any, refine: bool = False, threads: int = 1,
                progress: bool = True) -> list[dict]:
    """Run every job as one Dask task; rows in the jobs' order, whatever failed."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    bar = BatchProgress(jobs, progress)
    client.subscribe_topic(PROGRESS_TOPIC, bar.on_event)
    batch_id = uuid.uuid4().hex[:8]
    futures = {client.submit(run_job, job, refine, threads, report_progress, pure=False,
                             key=f"toxrt-{batch_id}-{i}-{Path(job.session).name}"): i
               for i, job in enumerate(jobs)}
    rows: list[dict | None] = [None] * len(jobs)
    try:
        for future in as_completed(futures):
            i = futures[future]
            try:
                rows[i] = future.result()
            except KilledWorker:
                rows[i] = failed_row(jobs[i].video, "the worker died each time it ran this video (crash, out "
                                     "of memory or killed); see the worker logs", jobs[i].session)
            except Exception as exc:  # the task itself never raises; this is Dask failing to run it
                rows[i] = failed_row(jobs[i].video, one_line(exc), jobs[i].session)
            bar.job_done(rows[i])
    except KeyboardInterrupt:
        client.cancel(list(futures))
        log.warning("interrupted: unfinished sessions are tracked again by the next run")
    finally:
        client.unsubscribe_topic(PROGRESS_TOPIC)
        bar.close()
    return [row or failed_row(job.video, "cancelled (interrupted)", job.session) for row, job in zip(rows, jobs)]


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

def add_parser(commands: Any) -> None:
    batch = commands.add_parser(
        "batch", help="track (and refine) many videos on Dask: this machine or a cluster",
        description="Each video is one Dask task. Re-running skips finished sessions. See docs/batch.md.")
    batch.add_argument("params", nargs="+", help="parameter files (TOML); one job each, or the template of --videos")
    batch.add_argument("--videos", default=None, help="glob of videos, each tracked with the one parameter file")
    batch.add_argument("--refine", action="store_true", help="refine each session after tracking (needs torch)")
    batch.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (tcp://host:8786)")
    batch.add_argument("--workers", type=int, default=None,
                       help="local worker processes (default: one per core); with --scheduler, wait for this many")
    batch.add_argument("--output-dir", default=None, help="write every session here (default: as each file says)")
    batch.add_argument("--results", default=None,
                       help=f"CSV of the result table (default: {RESULTS_CSV} in --output-dir or here)")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    batch.set_defaults(run=cmd_batch)


def cmd_batch(args: argparse.Namespace, extra: list[str]) -> int:
    """Exit code 0 when every video is done or skipped, 1 when any failed."""
    if extra:
        raise ConfigError(f"unexpected arguments {' '.join(extra)}")
    jobs, rows = plan_jobs(args.params, args.videos, args.output_dir)
    results = Path(args.results or Path(args.output_dir or ".") / RESULTS_CSV)
    if jobs:
        client, cluster, threads = start_cluster(args.scheduler, args.workers)
        try:
            print(f"toxrt batch: {len(jobs)} videos on {len(client.scheduler_info(n_workers=-1)['workers'])} "
                  f"workers ({client.scheduler.address}), {threads} threads per task", file=sys.stderr)
            rows = run_on_dask(jobs, client, args.refine, threads, progress=not args.quiet) + rows
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    write_table(rows, results)
    print("\n".join(table_lines(rows)))
    print(f"results: {results}")
    return 1 if any(row["status"] == FAILED for row in rows) else 0
