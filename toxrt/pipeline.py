"""The live stage, one frame at a time, and a whole tracking session around it.

``LiveTracker.step(frame)`` is the per-frame contract: it looks at the current frame only and
returns a :class:`~toxrt.types.FrameResult`. ``run_session(config)`` opens the source, prepares
the segmentation from a few sampled frames, runs the loop while recording, and at the end runs the
ToxId fragment fusion once and writes the trajectories.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .config import Config, config_to_dict, to_toml
from .errors import ToxrtError
from .features import blob_shapes, estimate_animal_size, identification_image_size
from .fragments import Linker
from .identity import LiveIdentities, fuse_fragments
from .output import assemble_trajectories, write_trajectories
from .recording import SessionWriter, event_to_dict, load_session
from .segment import SegmentationParams, Segmenter, compute_background, roi_mask_from_list, segment_sample_frames
from .source import FrameSource, open_source, video_name
from .types import Frame, FrameResult, Status

log = logging.getLogger(__name__)

SIZE_SAMPLE_FRAMES = 30
MAX_CONSECUTIVE_FRAME_ERRORS = 25


@dataclass(frozen=True)
class Setup:
    """What is learnt from sampled frames before tracking starts."""

    background: np.ndarray | None  # float32 (H, W) or None
    roi_mask: np.ndarray | None  # uint8 (H, W) or None
    number_of_animals: int
    single_animal_area: float  # pixels
    body_length_px: float
    crop_size: int  # side of the identification images
    max_distance_px: float  # linking gate


def prepare(config: Config, source: FrameSource) -> Setup:
    """Background, ROI, animal size, identification-image size and linking gate for this video."""
    count = max(config.number_of_frames_for_background if config.use_bkg else 0, SIZE_SAMPLE_FRAMES)
    samples = source.sample(count)
    if not samples:
        raise ToxrtError(f"{source.description}: no frame could be read")
    background = compute_background(samples, config.background_subtraction_stat) if config.use_bkg else None
    roi = roi_mask_from_list(config.roi_list, source.height, source.width)
    params = SegmentationParams.from_config(config)
    size_samples = samples[:: max(1, len(samples) // SIZE_SAMPLE_FRAMES)]
    segmenter = Segmenter(params, background, roi)
    counts = [len(blob_shapes(segmenter.contours(image), segmenter.area_ths)) for image in size_samples]
    areas, lengths = segment_sample_frames(size_samples, params, background, roi)
    if areas.size == 0:
        raise ToxrtError(
            f"no animal found in {len(size_samples)} sampled frames with intensity_ths={config.intensity_ths}, "
            f"area_ths={config.area_ths}, use_bkg={config.use_bkg}: check these parameters"
        )
    n_animals = config.number_of_animals
    if n_animals == 0:
        n_animals = int(np.bincount(counts).argmax()) or 1
        log.warning("number_of_animals not set; %d estimated from the sampled frames", n_animals)
    single_area, body_length = estimate_animal_size(areas, lengths)
    crop = config.segmentation.identification_image_size or identification_image_size(body_length)
    gate = config.linking.max_distance_px or config.linking.max_distance_body_lengths * body_length
    log.info("animal size: %.0f px, body length %.1f px, identification images %dx%d, gate %.1f px",
             single_area, body_length, crop, crop, gate)
    return Setup(background, roi, n_animals, single_area, body_length, crop, gate)


class LiveTracker:
    """Segmentation -> linking -> live identities, for one frame at a time (no future frames)."""

    def __init__(self, config: Config, setup: Setup):
        params = SegmentationParams.from_config(config, setup.crop_size, setup.single_animal_area)
        self.segmenter = Segmenter(params, setup.background, setup.roi_mask)
        self.linker = Linker(config.linking, setup.max_distance_px)
        self.identities = LiveIdentities(config.identity, setup.number_of_animals)
        self.number_of_animals = setup.number_of_animals
        # The live identity of every fragment alive now, for positions predicted without a blob.
        self._fragment_identity: dict[int, tuple[int, float]] = {}

    def step(self, frame: Frame) -> FrameResult:
        blobs = self.segmenter.detect(frame.image)
        if len(blobs) >= self.number_of_animals:
            # Every animal has a blob of its own, so a large blob is a large animal, not a crossing
            # (animals of very different sizes, such as a courting pair of spiders).
            blobs.is_crossing[:] = False
        link = self.linker.update(blobs)
        blobs.is_crossing = link.is_crossing  # size-flagged or merged, as the linker decided
        identity, probability, events = self.identities.update(
            frame.index, link.fragment, link.is_crossing, blobs.histogram, blobs.hu, link.ended
        )
        status = np.where(link.is_crossing, np.uint8(Status.CROSSING), np.uint8(Status.MEASURED))
        known = self._fragment_identity
        for fragment in link.ended.tolist():
            known.pop(fragment, None)
        for fragment, ident, prob in zip(link.fragment.tolist(), identity.tolist(), probability.tolist()):
            known[fragment] = (ident, prob)
        coasting = [known.get(f, (0, 0.0)) for f in link.coasting_fragment.tolist()]
        return FrameResult(
            frame_index=frame.index,
            time_s=frame.time_s,
            blobs=blobs,
            fragment=link.fragment,
            identity=identity,
            probability=probability,
            status=status,
            events=events,
            predicted_xy=link.coasting_xy,
            predicted_identity=np.array([c[0] for c in coasting], np.int32),
            crossing_identities={
                crossing: [known[f][0] for f in members if f in known]
                for crossing, members in link.crossing_members.items()
            },
        )

    def close(self) -> np.ndarray:
        """End every live fragment; returns their ids."""
        return self.linker.close()


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

    Returns the summary dict (also stored in session.json). Ctrl+C (KeyboardInterrupt) or ``stop``
    ends the loop early; everything tracked so far is still finished and written.
    """
    source = open_source(config)
    writer = None
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
        }
        writer = SessionWriter(folder, config.recording, meta, to_toml(config_to_dict(config)), setup.background,
                               setup.crop_size, config.segmentation.histogram_bins, overwrite=overwrite)
        tracker = LiveTracker(config, setup)
        loop = _run_loop(source, tracker, writer, progress, stop, on_frame)
        writer.write_events({"type": "fragment_end", "fragment": int(f), "frame": loop["frames"]}
                            for f in tracker.close())
        writer.update_meta(frames_tracked=loop["frames"], stopped_early_at=source.stopped_early_at,
                           interrupted=loop["interrupted"])
    finally:
        source.close()
        if writer is not None:
            writer.close()  # whatever happened, what was tracked reaches the disk
    summary = finish_session(folder, config, setup.number_of_animals)
    summary.update(loop)
    summary["stopped_early_at"] = source.stopped_early_at
    summary["session"] = str(folder)
    return summary


def _run_loop(source, tracker: LiveTracker, writer: SessionWriter, progress: bool,
              stop: threading.Event | None, on_frame) -> dict:
    from tqdm import tqdm

    timings = _Timings()
    frames = errors = consecutive_errors = 0
    blobs_per_frame = []
    interrupted = False
    started = time.perf_counter()
    bar = tqdm(total=source.n_frames, unit="frame", disable=not progress, desc="tracking", smoothing=0.1)
    try:
        for frame in source:
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
            writer.write_frame(result)
            if result.events:
                writer.write_events(event_to_dict(e) for e in result.events)
            if on_frame is not None:
                on_frame(result)
            frames += 1
            blobs_per_frame.append(int((~result.blobs.is_crossing).sum()))
            bar.update(1)
            if stop is not None and stop.is_set():
                interrupted = True
                break
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: finishing the session with what was tracked")
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    p50, p99 = timings.percentiles_ms()
    found = np.asarray(blobs_per_frame)
    return {
        "frames": frames,
        "frame_errors": errors,
        "interrupted": interrupted,
        "elapsed_s": elapsed,
        "fps": frames / elapsed if elapsed > 0 else float("nan"),
        "step_ms_p50": p50,
        "step_ms_p99": p99,
        "individual_blobs_per_frame": float(found.mean()) if found.size else 0.0,
        "writer_stalls": int(writer.stats.stalls),
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
    import json

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
