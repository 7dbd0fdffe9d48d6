"""What a tracking run exchanges with the outside world each frame.

Positions go out on the ZeroMQ publisher (``publish.py``); markers from a stimulus program come in
on the marker socket (``markers.py``); status events of a live source (lost, regained, frames
dropped) are forwarded. ``LiveStream.after_frame`` does all of it without ever waiting, and returns
the events the run must record.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..config import StreamingConfig
from ..sources.protocol import FrameSource
from ..types import FrameResult, Status

log = logging.getLogger(__name__)

STOP_MARKER = "toxrt.stop"  # a marker with this label ends a live session cleanly


def animal_arrays(result: FrameResult) -> dict[str, np.ndarray]:
    """One row per animal for the ``pos`` message.

    Individual blobs as they are (identity 0 while undecided); a crossing blob once for each
    identity known to be inside it (status crossing), or once with identity 0 when none is known;
    animals without a blob this frame at their predicted position (status predicted, area 0).
    An identity held by an individual blob is left out of the crossings' members, so that no
    message places one identity twice (a crossing's member list can lag behind the live
    identities when an animal leaves it as a new fragment).
    """
    blobs = result.blobs
    individual = np.flatnonzero(~result.is_crossing)
    rows = [individual]
    ids = [result.identity[individual]]
    probabilities = [result.probability[individual]]
    crossings = np.flatnonzero(result.is_crossing)
    placed = set(ids[0][ids[0] > 0].tolist()) if crossings.size else set()
    for j in crossings:
        members = [m for m in result.crossing_identities.get(int(result.fragment[j]), ()) if m[0] not in placed]
        members = members or [(0, 0.0)]
        rows.append(np.full(len(members), j))
        ids.append(np.array([m[0] for m in members], np.int32))
        probabilities.append(np.array([m[1] for m in members], np.float32))
    rows_all = np.concatenate(rows) if rows else np.zeros(0, np.intp)
    n_predicted = result.predicted_xy.shape[0]
    return {
        "ids": np.concatenate([*ids, result.predicted_identity]).astype(np.int32),
        "x": np.concatenate([blobs.centroid[rows_all, 0], result.predicted_xy[:, 0]]),
        "y": np.concatenate([blobs.centroid[rows_all, 1], result.predicted_xy[:, 1]]),
        "heading": np.concatenate([blobs.orientation[rows_all], np.full(n_predicted, np.nan)]),
        "area": np.concatenate([blobs.area[rows_all], np.zeros(n_predicted)]),
        "status": np.concatenate([result.status[rows_all], np.full(n_predicted, Status.PREDICTED, np.uint8)]),
        "p": np.concatenate([*probabilities, result.predicted_probability]).astype(np.float32),
        "fragment": np.concatenate([result.fragment[rows_all], result.predicted_fragment]),
    }


def sockets_wanted(cfg: StreamingConfig, live: bool) -> bool:
    """Whether a session opens its sockets: ``publish = "auto"`` does for live (and real-time) sources
    only, so a file tracked at full speed binds no port unless ``publish = "on"``."""
    return cfg.publish == "on" or (cfg.publish == "auto" and live)


class LiveStream:
    """The publisher and the marker receiver of one session, as configured in ``[streaming]``.

    ``live`` says whether the source is live or replayed in real time (see :func:`sockets_wanted`);
    when the sockets are not wanted nothing is bound and ``after_frame`` only forwards source events.
    """

    def __init__(self, cfg: StreamingConfig, live: bool = True):
        from .markers import MarkerReceiver
        from .publish import Publisher

        self.publisher = None
        self.markers = None
        self.stop_requested = False
        if not sockets_wanted(cfg, live):
            return
        try:
            if cfg.publish_address:
                self.publisher = Publisher(cfg.publish_address, cfg.publish_format, cfg.allow_remote, cfg.publish_hwm,
                                           camera=cfg.camera)
                log.info("publishing positions on %s", self.publisher.address)
                if cfg.wait_for_subscriber_s > 0 and not self.publisher.wait_for_subscriber(
                        timeout_s=cfg.wait_for_subscriber_s):
                    log.warning("no subscriber after %.1f s; starting anyway", cfg.wait_for_subscriber_s)
            if cfg.marker_address:
                self.markers = MarkerReceiver(cfg.marker_address, cfg.allow_remote)
        except BaseException:
            self.close()
            raise

    def after_frame(self, result: FrameResult, t_capture: float, source: FrameSource) -> list[dict]:
        """Publish the frame, forward source events, take markers in; returns events to record."""
        to_record: list[dict] = source.drain_events()
        if self.markers is not None:
            for marker in self.markers.drain():
                # Markers go out on the event topic too, so every subscriber sees the stimulus timeline.
                to_record.append({"type": "marker", "frame": result.frame_index, **marker})
                if marker.get("label") == STOP_MARKER:
                    log.warning("stop marker received at frame %d", result.frame_index)
                    self.stop_requested = True
        if self.publisher is not None:
            self.publisher.source_dropped = int(source.dropped)
            self.publisher.publish_positions(result.frame_index, t_capture, **animal_arrays(result))
            for event in result.events:
                self.publisher.publish_event(event)
            for event in to_record:
                self.publisher.publish_event(event)
        return to_record

    def report_recording(self, stats: Any) -> None:
        """Put the session writer's flush lag (``WriterStats``) into the next status messages."""
        if self.publisher is not None:
            self.publisher.status_fields["flush_lag_s"] = stats.flush_lag_s
            self.publisher.status_fields["flush_lag_max_s"] = stats.max_flush_lag_s

    def counters(self) -> dict:
        counts: dict = {}
        if self.publisher is not None:
            counts.update(published=self.publisher.sent, publish_dropped=self.publisher.dropped,
                          publish_address=self.publisher.address)
        if self.markers is not None:
            counts.update(markers_received=self.markers.received, markers_rejected=self.markers.rejected,
                          markers_too_large=self.markers.too_large, markers_overflow=self.markers.overflow)
        return counts

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        if self.markers is not None:
            self.markers.close()
