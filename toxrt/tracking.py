"""A whole tracking session around the live stage.

``run_session(config)`` opens the source, prepares the segmentation from sampled frames, runs the
frame loop (tracking, recording, publishing, markers), and at the end runs the ToxId fragment
fusion once over the recorded fragments and writes the trajectories. Ctrl+C, SIGTERM (through
``stop``) or a stop marker end the loop early; the session is still finished and written.
"""
from __future__ import annotations

import gc
import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .config import Config, config_to_dict, to_toml
from .errors import SessionError, ToxrtError
from .io.trajectory_files import assemble, idtrackerai_session_fields, write_trajectories
from .pipeline import LiveTracker, prepare, warm_up
from .io.recording import SessionWriter, event_to_dict
from .session_end import decide_identities, save_fragment_identities
from .io.session_lock import SessionLock
from .io.session_reader import load_session
from .sources.files import open_source, video_name
from .stream.live_stream import LiveLink
from .types import FrameResult

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FRAME_ERRORS = 25


class _Timings:
    """Per-frame processing times in a fixed ring (memory does not grow with session length)."""

    def __init__(self, size: int = 1 << 16):
        self.values = np.zeros(size)
        self.count = 0

    def add(self, seconds: float) -> None:
        self.values[self.count % self.values.size] = seconds
        self.count += 1

    def percentiles_ms(self, q=(50, 99)) -> list[float]:
        filled = self.values[: min(self.count, self.values.size)]
        return [float(np.percentile(filled, p) * 1e3) for p in q] if filled.size else [float("nan")] * len(q)


def session_folder(config: Config) -> Path:
    """``<output_dir>/session_<name>``; output_dir defaults to the first video's folder."""
    if config.output_dir:
        base = Path(config.output_dir)
    elif config.is_simulated or not config.video_paths:
        base = Path.cwd()
    else:
        first = Path(config.video_paths[0])
        base = first if first.is_dir() else first.parent
    return base / f"session_{video_name(config)}"


def run_session(
    config: Config,
    progress: bool = True,
    overwrite: bool = False,
    stop: threading.Event | None = None,
    on_frame: Callable[[FrameResult], None] | None = None,
) -> dict:
    """Track a whole source, record the session, fuse identities, write trajectories.

    Returns the summary dict (also stored in session.json). Ctrl+C (KeyboardInterrupt), ``stop``
    or a stop marker end the loop early; everything tracked so far is still finished and written.
    """
    source = open_source(config)
    if config.streaming.realtime and not is_live(source):
        from .sources.cameras import RealtimeSource

        # The replay clock starts with the first frame the loop asks for, not while prepare() runs.
        source = RealtimeSource(source, source.fps, autostart=False)
    writer = link = lock = tracker = None
    try:
        setup = prepare(config, source)
        folder = session_folder(config)
        lock = SessionLock(folder)  # before anything in the folder is replaced
        meta = {
            "name": video_name(config),
            "video_paths": list(config.video_paths),
            "width": source.width,
            "height": source.height,
            "frames_per_second": source.fps,
            "number_of_animals": setup.number_of_animals,
            "body_length_px": setup.body_length_px,
            "single_animal_area": setup.single_animal_area,
            "max_distance_px": setup.max_distance_px,
            "length_unit": config.length_unit,
            "camera": config.streaming.camera,
        }
        link = LiveLink(config.streaming, live=is_live(source))
        if link.publisher is not None:  # where to subscribe, also when the port was picked ("...:*")
            meta["publish_address"] = link.publisher.address
        writer = SessionWriter(folder, config.recording, meta, to_toml(config_to_dict(config)), setup.background,
                               setup.crop_size, config.segmentation.histogram_bins, overwrite=overwrite, lock=lock)
        first = source.sample(1)
        if first:  # before the replay clock starts: one-time costs must not cost frames
            warm_up(config, setup, first[0])
        tracker = LiveTracker(config, setup)
        if tracker.learner is not None and not tracker.learner.wait_until_ready():
            log.warning("the live appearance learner is slow to start; the first frames are tracked without it")
        if hasattr(source, "work_ahead"):  # a file: its reader thread may also detect
            source.work_ahead(tracker.detector())
        loop = _run_loop(source, tracker, writer, link, progress, stop, on_frame)
        writer.write_events({"type": "fragment_end", "fragment": int(f), "frame": loop["last_frame"]}
                            for f in tracker.close())
        if tracker.learner is not None:
            stats = tracker.learner.stats
            loop.update(live_model_trainings=stats.trainings, live_model_from_frame=stats.seeded_at_frame,
                        live_model_dropped_frames=stats.dropped_frames)
        writer.update_meta(frames_tracked=loop["frames"], stopped_early_at=source.stopped_early_at,
                           interrupted=loop["interrupted"], frames_dropped=loop["frames_dropped"])
    except BaseException:
        if writer is not None:
            log.warning("the session was not finished; `toxrt finish %s` writes the trajectories of what "
                        "was recorded", folder)
        if lock is not None:
            _close_quietly(writer)
            lock.release()
        raise
    finally:
        source.close()
        if link is not None:
            link.close()
        if tracker is not None and tracker.learner is not None:
            tracker.learner.close()  # also when the loop failed: no learner process outlives the run
    try:
        writer.close()  # whatever happened, what was tracked reaches the disk
        summary = finish_session(folder, config, setup.number_of_animals)
        summary.update(loop)
        summary["stopped_early_at"] = source.stopped_early_at
        summary["session"] = str(folder)
        _store_summary(folder, summary)
    finally:
        lock.release()
    return summary


def _close_quietly(writer: SessionWriter | None) -> None:
    """Close a writer while another error is on its way out (that error is the one reported)."""
    if writer is None:
        return
    try:
        writer.close()
    except ToxrtError as exc:  # the writer thread has logged it already
        log.debug("%s", exc)


def is_live(source) -> bool:
    """Live sources stamp frames with UNIX capture times and may drop frames."""
    return hasattr(source, "drain_events")


def _run_loop(source, tracker: LiveTracker, writer: SessionWriter, link: LiveLink, progress: bool,
              stop: threading.Event | None, on_frame) -> dict:
    from tqdm import tqdm

    live = is_live(source)
    timings, latencies = _Timings(), _Timings()
    frames = errors = consecutive_errors = individual_blobs = 0
    last_frame = -1
    interrupted = False
    started = time.perf_counter()
    bar = tqdm(total=source.n_frames, unit="frame", disable=not progress, desc="tracking", smoothing=0.1)
    # The objects of the setup (imported modules, models, caches: about 10^5) leave the collector's
    # view, so that a full collection during the loop scans only what the loop made: otherwise one
    # costs 50-100 ms, every 10^4 frames or so (frames dropped in real time).
    gc.freeze()
    try:
        for frame in source:
            # Live frames carry their capture time; a file's frame is "captured" when it reaches us.
            t_capture = frame.time_s if live else time.time()
            t0 = time.perf_counter()
            try:
                result = tracker.step(frame)
                consecutive_errors = 0
            except ToxrtError:
                raise
            except Exception:  # one bad frame must not end a live session; counted and logged
                errors += 1
                consecutive_errors += 1
                log.exception("frame %d failed", frame.index)
                if consecutive_errors > MAX_CONSECUTIVE_FRAME_ERRORS:
                    raise
                continue
            timings.add(time.perf_counter() - t0)
            link.report_recording(writer.stats)
            outside = link.after_frame(result, t_capture, source)
            latencies.add(time.time() - t_capture)  # capture to published (publishing included)
            writer.write_frame(result)
            if result.events:
                writer.write_events(event_to_dict(e) for e in result.events)
            if outside:
                writer.write_events(outside)
            if on_frame is not None:
                on_frame(result)
            frames += 1
            last_frame = frame.index
            individual_blobs += int(len(result.blobs) - result.blobs.is_crossing.sum())
            bar.update(1)
            if (stop is not None and stop.is_set()) or link.stop_requested:
                interrupted = True
                break
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: finishing the session with what was tracked")
    finally:
        bar.close()
        gc.unfreeze()
    elapsed = time.perf_counter() - started
    p50, p99 = timings.percentiles_ms()
    latency_p50, latency_p99 = latencies.percentiles_ms()
    return {
        "frames": frames,
        "last_frame": last_frame,
        "frame_errors": errors,
        "frames_dropped": int(getattr(source, "dropped", 0)),
        "interrupted": interrupted,
        "elapsed_s": elapsed,
        "fps": frames / elapsed if elapsed > 0 else float("nan"),
        "step_ms_p50": p50,
        "step_ms_p99": p99,
        "capture_to_publish_ms_p50": latency_p50,
        "capture_to_publish_ms_p99": latency_p99,
        "individual_blobs_per_frame": individual_blobs / frames if frames else 0.0,
        "writer_stalls": int(writer.stats.stalls),
        "frames_detected_by_reader": tracker.detected_ahead,
        "writer_flush_lag_max_s": float(writer.stats.max_flush_lag_s),
        "writer_slow_flushes": int(writer.stats.slow_flushes),
        "flush_interval_s": float(writer.cfg.flush_interval_s),
        **link.counters(),
    }


def finish_session(folder: Path, config: Config, number_of_animals: int, extra: dict | None = None) -> dict:
    """One identity per recorded fragment (``session_end``), then the trajectory files.

    session.json says ``complete: false`` until every output is written (a kill in between leaves
    a session that ``toxrt finish`` completes); temporary files of an earlier, killed attempt go.
    ``extra`` entries are added to the summary stored in session.json.
    """
    _set_complete(folder, False)
    remove_temporary_files(folder)
    session = load_session(folder)
    decision = decide_identities(session, config, number_of_animals)
    save_fragment_identities(folder, decision)
    fused = decision.identities
    out = assemble(
        session.blobs, fused, session.n_frames, number_of_animals,
        max_crossing_gap=max(1, int(round(2 * session.meta.get("frames_per_second", 25)))),
    )
    meta = dict(session.meta)
    meta.update(body_length=session.meta.get("body_length_px"), version=__version__, source="toxrt-live")
    individual = session.fragments[~session.fragments["is_crossing"]]
    identified = ~np.isnan(out.trajectories[..., 0])
    confidence = out.id_probabilities[..., 0][identified]
    summary = {
        "number_of_animals": number_of_animals,
        "fragments": int(individual.size),
        "crossing_fragments": int(session.fragments.size - individual.size),
        "fragments_identified": int(sum(1 for f in individual["fragment"] if int(f) in fused)),
        "fraction_identified": float(identified.mean()) if identified.size else 0.0,
        "mean_identity_probability": float(np.nanmean(confidence)) if np.isfinite(confidence).any() else float("nan"),
        **decision.quality(),
        **(extra or {}),
    }
    # quality measures of the identity stage (estimated_accuracy, ...) go into the files from the summary
    try:
        written = write_trajectories(folder / "trajectories", out.trajectories, out.id_probabilities, out.status,
                                     meta, config.trajectories_formats, areas=out.areas, quality=summary)
    except OSError as exc:  # a full disk: the recording is whole, only the outputs are missing
        raise SessionError(f"{folder / 'trajectories'}: cannot write the trajectories: {exc.strerror or exc}; "
                           f"make room and run `toxrt finish {folder}`") from None
    summary["outputs"] = [str(p) for p in written]
    _store_summary(folder, summary, idtrackerai_session_fields(folder, session.meta, session.n_frames,
                                                               number_of_animals))
    return summary


def _store_summary(folder: Path, summary: dict, fields: dict | None = None) -> None:
    """The summary (and ``fields``) into session.json, which then says ``complete: true``."""
    _update_meta(folder, **(fields or {}), summary=summary, complete=True)


def _set_complete(folder: Path, complete: bool) -> None:
    _update_meta(folder, complete=complete)


def _update_meta(folder: Path, **fields) -> None:
    path = folder / "session.json"
    meta = json.loads(path.read_text())
    meta.update(fields)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    tmp.replace(path)


def remove_temporary_files(folder: Path) -> list[Path]:
    """Delete the ``*.tmp`` files a killed writer left in a session folder (never data: every file is
    renamed into place only once whole). Call it only while holding the folder's SessionLock."""
    folder = Path(folder)
    candidates = [*folder.glob("*.tmp"), *(folder / "blobs").glob("*.tmp"), *(folder / "trajectories").rglob("*.tmp")]
    removed = [p for p in candidates if p.is_file()]  # offline/ is refine's, which takes no lock
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        log.info("removed %d temporary files left by an interrupted run in %s", len(removed), folder)
    return removed


def summary_lines(summary: dict) -> list[str]:
    """A one-screen account of a session for the terminal."""
    lines = [
        f"session:     {summary.get('session')}",
        f"frames:      {summary.get('frames')} tracked at {summary.get('fps', float('nan')):.1f} fps "
        f"(per frame p50 {summary.get('step_ms_p50', float('nan')):.2f} ms, p99 {summary.get('step_ms_p99', float('nan')):.2f} ms)",
        f"animals:     {summary.get('number_of_animals')} expected, {summary.get('individual_blobs_per_frame', 0):.2f} "
        "individual blobs found per frame",
        f"fragments:   {summary.get('fragments')} individual ({summary.get('fragments_identified')} identified), "
        f"{summary.get('crossing_fragments')} crossings",
        f"identities:  {100 * summary.get('fraction_identified', 0):.1f}% of animal-frames identified "
        f"({summary.get('identity_method', '?')}), estimated accuracy "
        f"{100 * summary.get('estimated_accuracy', float('nan')):.2f}%",
    ]
    lines += [f"WARNING:     {w}" for w in summary.get("warnings", [])]
    if summary.get("stopped_early_at") is not None:
        lines.append(f"WARNING:     the video broke off at frame {summary['stopped_early_at']}; "
                     "everything before it was tracked and written")
    if summary.get("interrupted"):
        lines.append("note:        stopped before the end of the source; what was tracked is written")
    if summary.get("writer_slow_flushes"):
        lag, interval = summary.get("writer_flush_lag_max_s", 0.0), summary.get("flush_interval_s", 0.0)
        lines.append(f"WARNING:     slow disk: {summary['writer_slow_flushes']} flushes were late, by up to "
                     f"{lag:.2f} s; a kill could have lost up to {interval + lag:.1f} s of tracking")
    if summary.get("markers_rejected"):
        lines.append(f"WARNING:     {summary['markers_rejected']} markers rejected ({summary.get('markers_too_large', 0)} "
                     "too large, the rest not plain data); the first are in the log")
    if summary.get("frame_errors"):
        lines.append(f"WARNING:     {summary['frame_errors']} frames failed and were skipped (see the log)")
    lines += [f"output:      {p}" for p in summary.get("outputs", [])]
    return lines
