"""A closed-loop stimulus program: switch a "stimulus" on when an animal enters a zone.

It subscribes to a running toxrt session's positions, and each time an animal (any, or the one
given with --identity) enters the rectangle --zone X0,Y0,X1,Y1 (pixels) it turns the stimulus on
and sends a ``stimulus_on`` marker back to the session (``stimulus_off`` when it leaves). Each
marker carries the triggering frame and its capture time, so the session's record gives the full
reaction latency: capture -> tracking -> publish -> this program -> marker arrival
(``t_arrival - payload.t_capture``). This program logs its own part, capture -> marker sent.

    python tools/closed_loop_example.py --zone 100,100,300,300
    python tools/closed_loop_example.py --identity 2 --zone 0,0,320,480 --duration 60
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from toxrt.stream.client import PositionClient
from toxrt.stream.markers import MarkerSender

log = logging.getLogger("closed_loop")


def in_zone(x: float, y: float, zone: tuple[float, float, float, float]) -> bool:
    x0, y0, x1, y1 = zone
    return x0 <= x <= x1 and y0 <= y <= y1


def run(address: str, marker_address: str, zone: tuple[float, float, float, float], identity: int | None,
        duration_s: float, max_triggers: int | None) -> list[float]:
    """Runs the loop; returns the capture -> marker-sent latencies (seconds) of each trigger."""
    latencies: list[float] = []
    inside: set[int] = set()
    deadline = time.monotonic() + duration_s
    with PositionClient(address) as client, MarkerSender(marker_address) as markers:
        seq = -1
        while time.monotonic() < deadline and (max_triggers is None or len(latencies) < max_triggers):
            message = client.wait_for_frame(after_seq=seq, timeout_s=0.5)
            if message is None:
                continue
            seq = message["seq"]
            now_inside = {i for i, x, y in zip(message["id"], message["x"], message["y"])
                          if i > 0 and (identity is None or i == identity) and in_zone(x, y, zone)}
            for animal in sorted(now_inside - inside):
                # Here a real program would switch its LED, sound or screen on.
                markers.send("stimulus_on", identity=animal, frame=message["frame"],
                             t_capture=message["t_capture"])
                latency = time.time() - message["t_capture"]
                latencies.append(latency)
                log.info("animal %d entered the zone at frame %d: stimulus on, %.1f ms after capture",
                         animal, message["frame"], latency * 1000)
            for animal in sorted(inside - now_inside):
                markers.send("stimulus_off", identity=animal, frame=message["frame"],
                             t_capture=message["t_capture"])
                log.info("animal %d left the zone at frame %d: stimulus off", animal, message["frame"])
            inside = now_inside
        log.info("received %d frames, missed %d", client.received, client.missed)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="tcp://127.0.0.1:5556", help="the session's publish_address")
    parser.add_argument("--markers", default="tcp://127.0.0.1:5557", help="the session's marker_address")
    parser.add_argument("--zone", default="0,0,100,100", help="X0,Y0,X1,Y1 in pixels")
    parser.add_argument("--identity", type=int, default=None, help="react to this identity only")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    parser.add_argument("--max-triggers", type=int, default=None, help="stop after this many stimuli")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    zone = tuple(float(v) for v in args.zone.split(","))
    if len(zone) != 4:
        parser.error("--zone needs four numbers X0,Y0,X1,Y1")
    latencies = run(args.address, args.markers, zone, args.identity, args.duration, args.max_triggers)
    if latencies:
        p50, p95 = np.percentile(np.array(latencies) * 1000, [50, 95])
        log.info("%d stimuli; capture -> marker sent: p50 %.1f ms, p95 %.1f ms", len(latencies), p50, p95)


if __name__ == "__main__":
    main()
