"""The live stage, one frame at a time.

``prepare(config, source)`` learns what tracking needs from a few sampled frames (background,
animal size, identification-image size, linking gate). ``LiveTracker.step(frame)`` is the per-frame
contract: segmentation -> linking -> live identities, looking at the current frame only, returning
a :class:`~toxrt.types.FrameResult`. ``tracking.py`` runs it over a whole source.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .appearance import FeatureShape, identity_features
from .config import Config
from .errors import ToxrtError
from .features import blob_shapes, estimate_animal_size, identification_image_size
from .identity import LiveIdentities
from .linker import Linker
from .live_appearance import LiveAppearance, Observation
from .roi import roi_mask_from_list
from .segment import SegmentationParams, Segmenter, compute_background, segment_sample_frames
from .sources.protocol import FrameSource
from .types import Frame, FrameResult, Status

log = logging.getLogger(__name__)

SIZE_SAMPLE_FRAMES = 30


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
    frames_per_second: float = 25.0


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
    return Setup(background, roi, n_animals, single_area, body_length, crop, gate, float(source.fps or 25.0))


WARM_UP_STEPS = 30


def warm_up(config: Config, setup: Setup, image: np.ndarray) -> None:
    """Step a throw-away tracker on one frame, ``WARM_UP_STEPS`` times, so that the first real
    frames pay no one-time cost (numba kernels loaded from their cache or compiled, first calls
    into OpenCV and SciPy, identity decisions and revisions): a real-time session would drop them."""
    tracker = LiveTracker(config, setup, learn=False)
    for k in range(WARM_UP_STEPS):
        tracker.step(Frame(k, k / 25.0, image))
    tracker.close()
    identity_features(np.zeros((1, setup.crop_size, setup.crop_size), np.uint8),
                      FeatureShape(setup.crop_size, config.appearance.band_fraction))


class LiveTracker:
    """Segmentation -> linking -> live identities, for one frame at a time (no future frames)."""

    def __init__(self, config: Config, setup: Setup, learn: bool = True):
        params = SegmentationParams.from_config(config, setup.crop_size, setup.single_animal_area)
        self.segmenter = Segmenter(params, setup.background, setup.roi_mask)
        self._segmentation = (params, setup.background, setup.roi_mask)
        self.detected_ahead = 0  # frames whose blobs came with them (found by a reader thread)
        self.linker = Linker(config.linking, setup.max_distance_px, setup.number_of_animals)
        self.identities = LiveIdentities(config.identity, setup.number_of_animals)
        self.number_of_animals = setup.number_of_animals
        # Live (identity, probability) of recent fragments, least recently seen first; bounded.
        self._fragment_identity: OrderedDict[int, tuple[int, float]] = OrderedDict()
        self._remembered_fragments = 64 + 8 * setup.number_of_animals
        # The appearance model learned during the session (None: ToxId alone decides).
        self.feature_shape = FeatureShape(setup.crop_size, config.appearance.band_fraction)
        self.learner = None
        if learn and config.appearance.live and setup.number_of_animals >= 2:
            self.learner = LiveAppearance(config.appearance, self.feature_shape, setup.number_of_animals,
                                          setup.frames_per_second, synchronous=config.appearance.live_inline)
        # Seconds the last step spent in segmentation (0 when the reader thread detected), linking,
        # and identities with the rest of the step (tools/bench_live.py reports them).
        self.stage_seconds = (0.0, 0.0, 0.0)

    def detector(self) -> Callable[[Frame], Frame]:
        """Segmentation and features for another thread (with buffers of its own): a frame -> the
        same frame with its ``blobs``, which ``step`` then takes as they are. Detection depends on
        the frame alone, so a file's reader thread can run it while this thread links."""
        segmenter = Segmenter(*self._segmentation)
        return lambda frame: dataclasses.replace(frame, blobs=segmenter.detect(frame.image))

    def step(self, frame: Frame) -> FrameResult:
        t0 = time.perf_counter()
        if frame.blobs is not None:
            blobs = frame.blobs
            self.detected_ahead += 1
        else:
            blobs = self.segmenter.detect(frame.image)
        t1 = time.perf_counter()
        link = self.linker.update(blobs)  # which blobs are crossings is the linker's decision
        t2 = time.perf_counter()
        individual = np.flatnonzero(~link.is_crossing)
        features = model = None
        if self.learner is not None:
            features = identity_features(blobs.crop[individual], self.feature_shape)
            model = self.learner.snapshot()
        identity, probability, events = self.identities.update(
            frame.index, link.fragment, link.is_crossing, blobs.histogram, blobs.hu, link.ended, model, features
        )
        if self.learner is not None:
            all_apart = individual.size == self.number_of_animals == len(blobs)
            self.learner.observe(Observation(frame.index, link.fragment[individual], features,
                                             identity[individual], all_apart))
        status = np.where(link.is_crossing, np.uint8(Status.CROSSING), np.uint8(Status.MEASURED))
        known = self._fragment_identity
        for fragment, ident, prob in zip(link.fragment.tolist(), identity.tolist(), probability.tolist()):
            known[fragment] = (ident, prob)
            known.move_to_end(fragment)
        # Ended fragments stay a while: the animals inside a crossing are named by them.
        while len(known) > self._remembered_fragments:
            known.popitem(last=False)
        coasting = [known.get(f, (0, 0.0)) for f in link.coasting_fragment.tolist()]
        events = list(events)
        if link.started.size or link.ended.size:
            crossing = dict(zip(link.fragment.tolist(), link.is_crossing.tolist()))
            events += [{"type": "fragment_start", "frame": frame.index, "fragment": f, "crossing": crossing[f]}
                       for f in link.started.tolist()]
            events += [{"type": "fragment_end", "frame": frame.index, "fragment": f} for f in link.ended.tolist()]
        self.stage_seconds = (t1 - t0, t2 - t1, time.perf_counter() - t2)
        return FrameResult(
            frame_index=frame.index,
            time_s=frame.time_s,
            blobs=blobs,
            fragment=link.fragment,
            is_crossing=link.is_crossing,
            identity=identity,
            probability=probability,
            status=status,
            events=events,
            predicted_xy=link.coasting_xy,
            predicted_identity=np.array([c[0] for c in coasting], np.int32),
            predicted_probability=np.array([c[1] for c in coasting], np.float32),
            predicted_fragment=link.coasting_fragment,
            crossing_identities={
                crossing: [known[f] for f in members if f in known and known[f][0] > 0]
                for crossing, members in link.crossing_members.items()
            },
        )

    def close(self) -> np.ndarray:
        """End every live fragment (and the appearance learner); returns their ids."""
        if self.learner is not None:
            self.learner.close()
        return self.linker.close()
