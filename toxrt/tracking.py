"""A whole tracking run around the live stage: ``toxrt track``.

``run_tracking(config)`` opens the source, prepares the segmentation from sampled frames, runs the
frame loop (tracking, recording, publishing, markers), and at the end decides one identity per
recorded fragment and writes the trajectories (``finish.py``). Ctrl+C, SIGTERM (through ``stop``)
or a stop marker end the loop early; the session is still finished and written.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Callable

from .config import Config, config_to_dict, to_toml
from .errors import ToxrtError
from .finish import finish_session, store_summary
from .io.layout import session_folder, session_name
from .io.recording import SessionWriter
from .io.session_lock import SessionLock
from .pipeline import LiveTracker, prepare, warm_up
from .sources import open_source
from .sources.protocol import FrameSource
from .sources.realtime import RealtimeSource
from .stream.live_stream import LiveStream
from .timing import TimeRing
from .types import FrameResult

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FRAME_ERRORS = 25
STEP_TIMES_KEPT = 1 << 16  # per-frame step times and latencies kept for the summary percentiles


def run_tracking(
    config: Config,
    progress: bool = True,
    overwrite: bool = False,
    stop: threading.Event | None = None,
    on_frame: Callable[[FrameResult], None] | None = None,
    source: FrameSource | None = None,
) -> dict:
    """Track a whole source, record the session, fuse identities, write trajectories.

    Returns the summary dict (also stored in session.json). Ctrl+C (KeyboardInterrupt), ``stop``
    or a stop marker end the loop early; everything tracked so far is still finished and written.
    ``source`` replaces the one ``config.video_paths`` names (e.g. a replay on an injected clock).
    """
    source = open_source(config) if source is None else source
    if config.streaming.realtime and not source.live:
        # The replay clock starts with the first frame the loop asks for, not while prepare() runs.
        source = RealtimeSource(source, source.fps, autostart=False)
    writer = stream = lock = tracker = None
    try:
        setup = prepare(config, source)
        folder = session_folder(config)
        lock = SessionLock(folder)  # before anything in the folder is replaced
        meta = {
            "name": session_name(config),
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
        stream = LiveStream(config.streaming, live=source.live)
        if stream.publisher is not None:  # where to subscribe, also when the port was picked ("...:*")
            meta["publish_address"] = stream.publisher.address
        writer = SessionWriter(folder, config.recording, meta, to_toml(config_to_dict(config)), setup.background,
                               setup.crop_size, config.segmentation.histogram_bins, overwrite=overwrite, lock=lock)
        first = source.sample(1)
        if first:  # before the replay clock starts: one-time costs must not cost frames
            warm_up(config, setup, first[0])
        tracker = LiveTracker(config, setup)
        if tracker.learner is not None and not tracker.learner.wait_until_ready():
            log.warning("the live appearance learner is slow to start; the first frames are tracked without it")
        source.work_ahead(tracker.detector())  # a file's reader thread may also detect
        loop = run_loop(source, tracker, writer, stream, progress, stop, on_frame)
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
        if stream is not None:
            stream.close()
        if tracker is not None and tracker.learner is not None:
            tracker.learner.close()  # also when the loop failed: no learner process outlives the run
    try:
        writer.close()  # whatever happened, what was tracked reaches the disk
        summary = finish_session(folder, config, setup.number_of_animals)
        summary.update(loop)
        summary["stopped_early_at"] = source.stopped_early_at
        summary["session"] = str(folder)
        store_summary(folder, summary)
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


def run_loop(source: FrameSource, tracker: LiveTracker, writer: SessionWriter, stream: LiveStream,
             progress: bool, stop: threading.Event | None, on_frame: Callable[[FrameResult], None] | None) -> dict:
    """The frame loop: track, publish, record each frame of ``source``; returns its counters.

    Ends with the source, at ``stop``, at a stop marker or at Ctrl+C (``interrupted``).
    """
    from tqdm import tqdm

    timings, latencies = TimeRing(STEP_TIMES_KEPT), TimeRing(STEP_TIMES_KEPT)
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
            t_capture = frame.time_s if source.live else time.time()
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
            stream.report_recording(writer.stats)
            outside = stream.after_frame(result, t_capture, source)
            latencies.add(time.time() - t_capture)  # capture to published (publishing included)
            writer.write_frame(result)
            if result.events:
                writer.write_events(result.events)
            if outside:
                writer.write_events(outside)
            if on_frame is not None:
                on_frame(result)
            frames += 1
            last_frame = frame.index
            individual_blobs += int(len(result.blobs) - result.is_crossing.sum())
            bar.update(1)
            if (stop is not None and stop.is_set()) or stream.stop_requested:
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
        "frames_dropped": int(source.dropped),
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
        **stream.counters(),
    }


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
        lines.append(f"WARNING:     recording late (slow disk or busy CPU): {summary['writer_slow_flushes']} "
                     f"flushes were late, by up to {lag:.2f} s; a kill could have lost up to {interval + lag:.1f} s "
                     "of tracking")
    if summary.get("markers_rejected"):
        lines.append(f"WARNING:     {summary['markers_rejected']} markers rejected ({summary.get('markers_too_large', 0)} "
                     "too large, the rest not plain data); the first are in the log")
    if summary.get("frame_errors"):
        lines.append(f"WARNING:     {summary['frame_errors']} frames failed and were skipped (see the log)")
    lines += [f"output:      {p}" for p in summary.get("outputs", [])]
    return lines
