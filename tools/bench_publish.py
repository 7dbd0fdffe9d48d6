"""Cost of live publishing: per-frame encode time, and publish -> receive latency to a subscriber
in another process, for N animals at a given frame rate.

    python tools/bench_publish.py --animals 20 --rate 100 --seconds 10
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toxrt.stream.publish import Publisher  # noqa: E402
from toxrt.stream.wire import encode_positions  # noqa: E402

SUBSCRIBER = r"""
import json, sys, time, zmq
from toxrt.stream.wire import decode
address, count = sys.argv[1], int(sys.argv[2])
socket = zmq.Context().socket(zmq.SUB)
socket.setsockopt(zmq.SUBSCRIBE, b"pos")
socket.connect(address)
latencies, seqs = [], []
while len(seqs) < count and socket.poll(5000):
    topic, payload = socket.recv_multipart()
    t = time.time()
    message = decode(payload)
    latencies.append(t - message["t_publish"])
    seqs.append(message["seq"])
print(json.dumps({"latencies": latencies, "seqs": seqs}))
"""


def arrays(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"ids": np.arange(1, n + 1, dtype=np.int32), "x": rng.uniform(0, 1000, n), "y": rng.uniform(0, 1000, n),
            "heading": rng.uniform(-1.5, 1.5, n), "area": rng.uniform(100, 500, n),
            "status": np.zeros(n, np.uint8), "p": rng.random(n).astype(np.float32),
            "fragment": np.arange(n, dtype=np.int64)}


def bench_encode(n_animals: int, repeats: int, fmt: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    a = arrays(n_animals, rng)
    times = np.empty(repeats)
    for k in range(repeats):
        t0 = time.perf_counter()
        encode_positions(k, k, 1.0, 2.0, **a, fmt=fmt)
        times[k] = time.perf_counter() - t0
    return times


def bench_latency(n_animals: int, rate: float, seconds: float, fmt: str) -> dict:
    count = int(rate * seconds)
    rng = np.random.default_rng(1)
    with Publisher("tcp://127.0.0.1:*", fmt=fmt, status_interval_s=1e9) as publisher:
        child = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, publisher.address, str(count)],
                                 stdout=subprocess.PIPE, text=True, cwd=ROOT)
        if not publisher.wait_for_subscriber(b"pos", timeout_s=30):
            child.kill()
            raise SystemExit("the subscriber did not connect")
        a = arrays(n_animals, rng)
        send_times = np.empty(count)
        start = time.perf_counter()
        for k in range(count):
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t0 = time.perf_counter()
            publisher.publish_positions(k, time.time(), **a)
            send_times[k] = time.perf_counter() - t0
        out, _ = child.communicate(timeout=60)
        dropped = publisher.dropped
    result = json.loads(out)
    latency = np.array(result["latencies"]) * 1000
    return {"sent": count, "received": len(latency), "dropped": dropped,
            "in_order": result["seqs"] == sorted(result["seqs"]),
            "latency_ms": np.percentile(latency, [50, 95, 99]).tolist() if latency.size else [],
            "publish_call_us": (np.percentile(send_times, [50, 95, 99]) * 1e6).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--animals", type=int, default=20)
    parser.add_argument("--rate", type=float, default=100.0, help="frames per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=20000, help="encode repetitions")
    args = parser.parse_args()
    for fmt in ("msgpack", "json"):
        t = bench_encode(args.animals, args.repeats, fmt) * 1e6
        p50, p95, p99 = np.percentile(t, [50, 95, 99])
        print(f"encode {fmt:7s} {args.animals} animals: p50 {p50:.1f} us  p95 {p95:.1f} us  p99 {p99:.1f} us")
    for fmt in ("msgpack", "json"):
        r = bench_latency(args.animals, args.rate, args.seconds, fmt)
        print(f"publish -> receive ({fmt}, {args.rate:g} fps, {r['received']}/{r['sent']} received, "
              f"dropped {r['dropped']}, in order {r['in_order']}): latency p50/p95/p99 "
              + "/".join(f"{v:.3f}" for v in r["latency_ms"]) + " ms; publish call p50/p95/p99 "
              + "/".join(f"{v:.0f}" for v in r["publish_call_us"]) + " us")


if __name__ == "__main__":
    main()
