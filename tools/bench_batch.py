"""Throughput of `toxrt batch` on this machine: Dask with 1 and 2 workers against a plain loop.

Writes (once, reused) simulated videos, then tracks all of them three ways, each into a fresh
output folder: a sequential loop of ``toxrt.batch.run_job`` in this process (all cores for each
video), a LocalCluster with 1 worker (all cores for its one task), and one with 2 workers (one
core per task). Also times Dask's bare per-task round trip (a no-op task) against a plain call.
Prints wall times, frames per second over the batch, videos per hour, and the load average.

    .venv/bin/python tools/bench_batch.py [--videos 8] [--frames 1500] [--width 1280 --height 720]
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from toxrt.batch import DONE, plan_jobs, run_job
from toxrt.batch_cluster import machine_cores, run_on_dask, start_cluster
from toxrt.config import build_config
from toxrt.sim.writer import write_simulation


def make_videos(folder: Path, n: int, frames: int, width: int, height: int, animals: int) -> list[str]:
    params = []
    for i in range(n):
        out = folder / f"video{i}"
        if not (out / "params.toml").exists():
            sim = build_config({"number_of_animals": animals,
                                "sim": {"frames": frames, "width": width, "height": height, "seed": i}}).sim
            written = write_simulation(out, sim, animals)["params"]
            written.write_text(written.read_text().replace('name = "simulation"', f'name = "video{i}"'))
        params.append(str(out / "params.toml"))
    return params


def noop(x: int) -> int:
    return x


def per_task_overhead(tasks: int) -> tuple[float, float]:
    """Seconds per no-op task on a 1-worker LocalCluster (submit to result, all in flight) and
    per plain call."""
    client, cluster, _ = start_cluster(workers=1)
    try:
        client.gather(client.map(noop, range(10), pure=False))  # warm up
        t0 = time.perf_counter()
        client.gather(client.map(noop, range(tasks), pure=False))
        dask_s = (time.perf_counter() - t0) / tasks
    finally:
        client.close()
        cluster.close()
    t0 = time.perf_counter()
    for i in range(tasks):
        noop(i)
    return dask_s, (time.perf_counter() - t0) / tasks


def run_mode(mode: str, params: list[str], out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    jobs, failed = plan_jobs(params, output_dir=str(out))
    assert not failed, failed
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    if mode == "loop":
        started = t0
        rows = [run_job(job, threads=machine_cores()) for job in jobs]
    else:
        client, cluster, threads = start_cluster(workers=int(mode[-1]))
        started = time.perf_counter()
        try:
            rows = run_on_dask(jobs, client, threads=threads, progress=False)
        finally:
            client.close()
            cluster.close()
    wall = time.perf_counter() - t0
    assert all(row["status"] == DONE for row in rows), rows
    frames = sum(row["frames"] for row in rows)
    return {"mode": mode, "wall_s": wall, "startup_s": started - t0, "frames": frames,
            "task_s": sum(row["seconds"] for row in rows), "load": (load_before, os.getloadavg()[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--animals", type=int, default=8)
    parser.add_argument("--data", default="/tmp/toxrt_bench_batch", help="videos (kept) and sessions go here")
    parser.add_argument("--modes", nargs="+", default=["loop", "dask1", "dask2"])
    parser.add_argument("--noop-tasks", type=int, default=500)
    args = parser.parse_args()

    data = Path(args.data) / f"{args.videos}x{args.width}x{args.height}x{args.frames}"
    t0 = time.perf_counter()
    params = make_videos(data, args.videos, args.frames, args.width, args.height, args.animals)
    print(f"{args.videos} videos of {args.frames} frames at {args.width}x{args.height}, {args.animals} animals "
          f"({time.perf_counter() - t0:.0f} s to write or find); {machine_cores()} cores; "
          f"load average {os.getloadavg()[0]:.2f}")
    results = [run_mode(mode, params, data / f"sessions_{mode}") for mode in args.modes]
    loop = next((r for r in results if r["mode"] == "loop"), None)
    print(f"\n{'mode':<6} {'wall s':>8} {'startup s':>9} {'fps':>7} {'videos/h':>9} {'vs loop':>8}  load before/after")
    for r in results:
        speed = f"{loop['wall_s'] / r['wall_s']:.2f}x" if loop else "-"
        print(f"{r['mode']:<6} {r['wall_s']:8.1f} {r['startup_s']:9.1f} {r['frames'] / r['wall_s']:7.1f} "
              f"{3600 * args.videos / r['wall_s']:9.0f} {speed:>8}  {r['load'][0]:.2f}/{r['load'][1]:.2f}")
    one = next((r for r in results if r["mode"] == "dask1"), None)
    if loop and one:
        print(f"\nDask overhead with 1 worker vs the loop: {(one['wall_s'] - loop['wall_s']) / args.videos:+.2f} s per "
              f"video ({one['startup_s']:.1f} s of it cluster start-up, once per batch)")
    dask_s, plain_s = per_task_overhead(args.noop_tasks)
    print(f"no-op task round trip, {args.noop_tasks} tasks in flight: Dask {dask_s * 1e3:.2f} ms per task, "
          f"plain call {plain_s * 1e6:.2f} us; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
