"""A whole tracking session around the live stage.

``run_session(config)`` opens the source, prepares the segmentation from sampled frames, runs the
frame loop (tracking, recording, publishing, markers), and at the end runs the ToxId fragment
fusion once over the recorded fragments and writes the trajectories. Ctrl+C, SIGTERM (through
``stop``) or a stop marker end the loop early; the session is still finished and written.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .config import Config, config_to_dict, to_toml
from .errors import ToxrtError
from .fusion import fuse_fragments
from .output import assemble_trajectories, write_trajectories
from .pipeline import LiveTracker, prepare
from .recording import SessionWriter, event_to_dict
from .session_reader import load_session
from .source import open_source, video_name
from .streaming import LiveLink
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
        from .live_source import RealtimeSource

        # The replay clock starts with the first frame the loop asks for, not while prepare() runs.
        source = RealtimeSource(source, source.fps, autostart=False)
    writer = link = None
    try:
        setup = prepare(config, source)
        folder = session_folder(config)
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
            "camera": config.streaming.camera,
        }
        link = LiveLink(config.streaming)
        writer = SessionWriter(folder, config.recording, meta, to_toml(config_to_dict(config)), setup.background,
                               setup.crop_size, config.segmentation.histogram_bins, overwrite=overwrite)
        tracker = LiveTracker(config, setup)
        loop = _run_loop(source, tracker, writer, link, progress, stop, on_frame)
        writer.write_events({"type": "fragment_end", "fragment": int(f), "frame": loop["last_frame"]}
                            for f in tracker.close())
        writer.update_meta(frames_tracked=loop["frames"], stopped_early_at=source.stopped_early_at,
                           interrupted=loop["interrupted"], frames_dropped=loop["frames_dropped"])
    finally:
        source.close()
        if link is not None:
            link.close()
        if writer is not None:
            writer.close()  # whatever happened, what was tracked reaches the disk
    summary = finish_session(folder, config, setup.number_of_animals)
    summary.update(loop)
    summary["stopped_early_at"] = source.stopped_early_at
    summary["session"] = str(folder)
    _store_summary(folder, summary)
    return summary


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
        **link.counters(),
    }


def finish_session(folder: Path, config: Config, number_of_animals: int) -> dict:
    """End-of-session ToxId fusion over the recorded fragments, then the trajectory files."""
    session = load_session(folder)
    rng = np.random.default_rng(0)
    samples = session.fragment_samples(config.identity.fusion_samples, rng)
    fused = fuse_fragments(session.fragments, samples, number_of_animals, config.identity)
    trajectories, probabilities, status = assemble_trajectories(
        session.blobs, fused, session.n_frames, number_of_animals,
        max_crossing_gap=max(1, int(round(2 * session.meta.get("frames_per_second", 25)))),
    )
    meta = dict(session.meta)
    meta.update(body_length=session.meta.get("body_length_px"), version=__version__, source="toxrt-live")
    written = write_trajectories(folder / "trajectories", trajectories, probabilities, status, meta,
                                 config.trajectories_formats)
    individual = session.fragments[~session.fragments["is_crossing"]]
    identified = ~np.isnan(trajectories[..., 0])
    confidence = probabilities[..., 0][identified]
    summary = {
        "number_of_animals": number_of_animals,
        "fragments": int(individual.size),
        "crossing_fragments": int(session.fragments.size - individual.size),
        "fragments_identified": int(sum(1 for f in individual["fragment"] if int(f) in fused)),
        "fraction_identified": float(identified.mean()) if identified.size else 0.0,
        "mean_identity_probability": float(confidence.mean()) if confidence.size else float("nan"),
        "outputs": [str(p) for p in written],
    }
    _store_summary(folder, summary)
    return summary


def _store_summary(folder: Path, summary: dict) -> None:
    path = folder / "session.json"
    meta = json.loads(path.read_text())
    meta["summary"] = summary
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    tmp.replace(path)


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
        f"identities:  {100 * summary.get('fraction_identified', 0):.1f}% of animal-frames identified, "
        f"mean identity probability {summary.get('mean_identity_probability', float('nan')):.3f}",
    ]
    if summary.get("stopped_early_at") is not None:
        lines.append(f"WARNING:     the video broke off at frame {summary['stopped_early_at']}; "
                     "everything before it was tracked and written")
    if summary.get("interrupted"):
        lines.append("note:        stopped before the end of the source; what was tracked is written")
    if summary.get("frame_errors"):
        lines.append(f"WARNING:     {summary['frame_errors']} frames failed and were skipped (see the log)")
    lines += [f"output:      {p}" for p in summary.get("outputs", [])]
    return lines
