"""toxrt batch: real Dask clusters (a LocalCluster, and `dask scheduler` / `dask worker` processes)
tracking real video files written through OpenCV."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from toxrt.batch import (DONE, FAILED, SKIPPED, limited_threads, plan_jobs, run_job, session_names,
                         table_lines, write_table)
from toxrt.batch_cluster import machine_cores, run_on_dask, start_cluster, threads_per_task
from toxrt.config import build_config
from toxrt.errors import ConfigError, ToxrtError
from toxrt.sim.writer import write_simulation

from .helpers import free_port, toxrt

pytest.importorskip("distributed")  # a failure under CI=true: `make .venv/.full` installs it

ROOT = Path(__file__).resolve().parents[1]


def simulate(folder: Path, seed: int, frames: int = 60, animals: int = 3, realtime: bool = False) -> Path:
    """A short simulated video with its parameter file (session name "simulation")."""
    sim = build_config({"number_of_animals": animals,
                        "sim": {"frames": frames, "seed": seed, "width": 160, "height": 120}}).sim
    params = write_simulation(folder, sim, animals)["params"]
    if realtime:  # replayed at 25 fps: the task lasts frames / 25 s whatever the machine's speed
        params.write_text(params.read_text() + "\n[streaming]\nrealtime = true\n")
    return params


def corrupt(folder: Path, like: Path) -> Path:
    folder.mkdir()
    shutil.copy(like, folder / "params.toml")
    (folder / "video.avi").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes())
    return folder / "params.toml"


def by_video(rows):
    return {Path(row["video"]).parent.name: row for row in rows}


@pytest.mark.slow
def test_two_local_workers_track_three_videos_report_the_corrupt_one_and_skip_them_on_a_rerun(tmp_path):
    params = [simulate(tmp_path / f"v{i}", seed=i) for i in range(3)]
    params.append(corrupt(tmp_path / "bad", params[0]))
    jobs, failed = plan_jobs([str(p) for p in params])
    assert failed == [] and len(jobs) == 4
    client, cluster, threads = start_cluster(workers=2)
    try:
        assert len(client.scheduler_info()["workers"]) == 2
        assert threads == max(1, machine_cores() // 2) == threads_per_task(client)
        rows = by_video(run_on_dask(jobs, client, threads=threads, progress=False))
        assert [rows[f"v{i}"]["status"] for i in range(3)] == [DONE] * 3
        for i in range(3):
            session = Path(rows[f"v{i}"]["session"])
            assert session == tmp_path / f"v{i}" / "session_simulation"
            assert rows[f"v{i}"]["frames"] == 60
            assert 0 < rows[f"v{i}"]["estimated_accuracy"] <= 1
            trajectories = np.load(session / "trajectories" / "trajectories.npy", allow_pickle=True).item()
            assert trajectories["trajectories"].shape == (60, 3, 2)
        bad = rows["bad"]
        assert bad["status"] == FAILED and "\n" not in bad["message"]
        assert str(tmp_path / "bad" / "video.avi") in bad["message"] and "cannot be opened" in bad["message"]
        assert not (tmp_path / "bad" / "session_simulation").exists()

        stamps = {i: (tmp_path / f"v{i}" / "session_simulation" / "session.json").stat().st_mtime_ns for i in range(3)}
        again = by_video(run_on_dask(jobs, client, threads=threads, progress=False))
        assert [again[f"v{i}"]["status"] for i in range(3)] == [SKIPPED] * 3
        assert [again[f"v{i}"]["frames"] for i in range(3)] == [60] * 3
        assert again["bad"]["status"] == FAILED
        assert stamps == {i: (tmp_path / f"v{i}" / "session_simulation" / "session.json").stat().st_mtime_ns
                          for i in range(3)}, "a finished session was written again"
    finally:
        client.close()
        cluster.close()


@pytest.mark.slow
def test_a_worker_killed_during_a_task_has_the_task_run_again_and_the_batch_completes(tmp_path):
    params = [str(simulate(tmp_path / f"v{i}", seed=i, frames=100, realtime=True)) for i in range(2)]
    jobs, _ = plan_jobs(params)
    client, cluster, threads = start_cluster(workers=2)
    try:
        result = {}
        runner = threading.Thread(target=lambda: result.update(rows=run_on_dask(jobs, client, threads=threads,
                                                                                progress=False)))
        runner.start()
        deadline = time.monotonic() + 120
        victim = None
        while victim is None and time.monotonic() < deadline:
            started = [job for job in jobs if (Path(job.session) / "session.json").exists()]
            busy = [worker for worker, keys in client.processing().items() if keys]
            if started and busy:
                victim = busy[0]  # its task is tracking: its session folder is being written
            time.sleep(0.05)
        assert victim is not None, "no task started tracking"
        (key,) = client.processing()[victim]
        killed = jobs[int(key.split("-")[2])]  # keys are toxrt-<batch>-<job index>-<session folder>
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        runner.join(timeout=180)
        assert not runner.is_alive()
        rows = result["rows"]
        assert [row["status"] for row in rows] == [DONE, DONE], rows
        for job in jobs:
            meta = json.loads((Path(job.session) / "session.json").read_text())
            assert meta["complete"] and meta["summary"]["frames"] > 0 and not meta["summary"]["interrupted"]
        # the killed task's session was tracked again after the kill, from its start
        assert (Path(killed.session) / "session.json").stat().st_mtime > killed_at
        assert json.loads((Path(killed.session) / "session.json").read_text())["summary"]["last_frame"] == 99
        assert pid not in client.run(os.getpid).values()  # the killed process is gone; its task ran elsewhere
    finally:
        client.close()
        cluster.close()


def test_a_video_whose_worker_dies_every_time_is_reported_as_failed(tmp_path):
    import dask

    (job,) = plan_jobs([str(simulate(tmp_path / "v", seed=1, frames=100, realtime=True))])[0]
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):  # no second try
        client, cluster, threads = start_cluster(workers=1)
    try:
        result = {}
        runner = threading.Thread(target=lambda: result.update(rows=run_on_dask([job], client, progress=False)))
        runner.start()
        deadline = time.monotonic() + 120
        while not (Path(job.session) / "session.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(next(iter(client.run(os.getpid).values())), signal.SIGKILL)  # as a crash would
        runner.join(timeout=120)
        (row,) = result["rows"]
        assert row["status"] == FAILED and row["message"].startswith("the worker died each time it ran this video")
    finally:
        client.close()
        cluster.close()


def test_refine_runs_through_its_public_entry_and_a_rerun_skips_it(tmp_path):
    # One animal: refinement has nobody to tell apart and keeps the live identities at once (no
    # training), which keeps this test fast while the whole path (refine_session, its files,
    # the resume check) is real.
    params = simulate(tmp_path / "solo", seed=3, animals=1)
    (job,), _ = plan_jobs([str(params)])
    row = run_job(job, refine=True, threads=1)
    assert row["status"] == DONE, row
    summary = json.loads((Path(job.session) / "offline" / "refine_summary.json").read_text())
    assert summary["status"] == "kept_live"
    again = run_job(job, refine=True, threads=1)
    assert again["status"] == SKIPPED and again["frames"] == 60


def test_a_failed_refinement_keeps_the_tracked_session_and_says_so(tmp_path):
    params = simulate(tmp_path / "v", seed=1)
    params.write_text(params.read_text() + "\n[recording]\nidentification_images = false\n")
    (job,), _ = plan_jobs([str(params)])
    row = run_job(job, refine=True)
    assert row["status"] == FAILED and row["message"].startswith("tracked; refine failed: "), row
    assert run_job(job)["status"] == SKIPPED  # the tracking itself is finished


def test_a_session_stopped_by_hand_is_kept_and_reported(tmp_path):
    (job,), _ = plan_jobs([str(simulate(tmp_path / "v", seed=1))])
    assert run_job(job)["status"] == DONE
    path = Path(job.session) / "session.json"
    meta = json.loads(path.read_text())
    meta["summary"]["interrupted"] = True
    path.write_text(json.dumps(meta))
    row = run_job(job)
    assert row["status"] == FAILED and "stopped before the end" in row["message"]
    assert json.loads(path.read_text()) == meta


@pytest.mark.slow
def test_an_unfinished_session_is_tracked_again(tmp_path):
    (job,), _ = plan_jobs([str(simulate(tmp_path / "v", seed=1))])
    assert run_job(job)["status"] == DONE
    path = Path(job.session) / "session.json"
    meta = json.loads(path.read_text())
    meta["complete"] = False  # what a worker killed while recording leaves
    path.write_text(json.dumps(meta))
    row = run_job(job)
    assert row["status"] == DONE and json.loads(path.read_text())["complete"]


def test_planning_a_batch(tmp_path):
    params = [simulate(tmp_path / f"day{i}", seed=i) for i in range(2)]
    jobs, failed = plan_jobs([str(params[0])], videos=str(tmp_path / "day*" / "video.avi"),
                             output_dir=str(tmp_path / "out"))
    assert [Path(j.session) for j in jobs] == [tmp_path / "out" / "session_day0_video",
                                               tmp_path / "out" / "session_day1_video"]
    assert all(j.config.streaming.publish_address == "" and j.config.streaming.marker_address == "" for j in jobs)
    assert session_names(["/a/x.avi", "/b/y.avi"]) == ["x", "y"]

    bad = tmp_path / "bad.toml"
    bad.write_text("number_of_animals = -1\n")
    live = tmp_path / "live.toml"
    live.write_text('video_paths = ["camera:0"]\n')
    jobs, failed = plan_jobs([str(params[0]), str(bad), str(live)])
    assert len(jobs) == 1 and [row["status"] for row in failed] == [FAILED, FAILED]
    assert "number_of_animals" in failed[0]["message"] and "live source" in failed[1]["message"]

    with pytest.raises(ConfigError, match="no video matches"):
        plan_jobs([str(params[0])], videos=str(tmp_path / "*.mp4"))
    with pytest.raises(ConfigError, match="exactly one template"):
        plan_jobs([str(p) for p in params], videos=str(tmp_path / "day*" / "video.avi"))
    with pytest.raises(ConfigError, match="would both write"):
        plan_jobs([str(params[0]), str(params[0])])


def test_the_result_table(tmp_path):
    rows = [{"video": "a.avi", "status": DONE, "frames": 10, "fps": 99.5, "estimated_accuracy": 0.98765,
             "seconds": 1.5, "session": "/out/session_a", "message": ""},
            {"video": "b.avi", "status": FAILED, "frames": None, "fps": None, "estimated_accuracy": None,
             "seconds": 0.1, "session": "", "message": "b.avi: cannot be opened as a video"}]
    write_table(rows, tmp_path / "sub" / "results.csv")
    with open(tmp_path / "sub" / "results.csv") as handle:
        read = list(csv.DictReader(handle))
    assert read[0]["estimated_accuracy"] == "0.98765" and read[1]["frames"] == "" and read[1]["status"] == "failed"
    lines = table_lines(rows)
    assert "0.9877" in lines[1] and "cannot be opened" in lines[2]
    assert lines[-1] == "2 videos: 1 done, 0 skipped (already finished), 1 failed"


def test_task_threads_are_capped_and_restored():
    from threadpoolctl import threadpool_info

    before = cv2.getNumThreads()
    with limited_threads(1):
        assert cv2.getNumThreads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    assert cv2.getNumThreads() == before


def test_an_unreachable_scheduler_is_a_one_line_error():
    port = free_port()
    with pytest.raises(ToxrtError, match=f"--scheduler tcp://127.0.0.1:{port}: cannot connect"):
        start_cluster(f"tcp://127.0.0.1:{port}", connect_timeout_s=1)


@pytest.mark.slow
def test_batch_command_on_an_existing_dask_cluster(tmp_path):
    """The commands docs/batch.md gives: `dask scheduler`, `dask worker`, `toxrt batch --scheduler`."""
    params = simulate(tmp_path / "v0", seed=0)
    simulate(tmp_path / "v1", seed=1)
    corrupt(tmp_path / "v2", params)
    port = free_port()
    dask = str(Path(sys.executable).with_name("dask"))
    address = f"tcp://127.0.0.1:{port}"
    scheduler = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--dashboard-address", ":0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([dask, "worker", address, "--nworkers", "1", "--nthreads", "2",
                               "--local-directory", str(tmp_path / "scratch")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = toxrt("batch", str(params), "--videos", str(tmp_path / "v*" / "video.avi"), "--scheduler", address,
                       "--workers", "1", "--output-dir", str(tmp_path / "out"), "--quiet")
        assert result.returncode == 1, result.stderr  # one video failed
        assert "Traceback" not in result.stderr
        assert "threads per task" in result.stderr and "1 workers" in result.stderr
        with open(tmp_path / "out" / "batch_results.csv") as handle:
            rows = {Path(r["video"]).parent.name: r for r in csv.DictReader(handle)}
        assert [rows[v]["status"] for v in ("v0", "v1", "v2")] == ["done", "done", "failed"]
        assert "cannot be opened" in rows["v2"]["message"]
        assert "2 done, 0 skipped (already finished), 1 failed" in result.stdout
        assert (tmp_path / "out" / "session_v0_video" / "trajectories" / "trajectories.npy").exists()
        assert not any((tmp_path / "scratch").rglob("trajectories*")), "a session was written to worker scratch"
    finally:
        for process in (worker, scheduler):
            process.terminate()
        for process in (worker, scheduler):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def test_batch_command_user_errors_are_one_line(tmp_path):
    params = tmp_path / "p.toml"
    params.write_text("number_of_animals = 2\n")
    result = toxrt("batch", str(params), "--videos", str(tmp_path / "*.avi"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("toxrt: error: --videos")
    result = toxrt("batch", str(params), "--workers", "0")
    assert result.returncode == 2 and "--workers" in result.stderr and "Traceback" not in result.stderr
