"""Seeded fuzzing of everything a user or a peer program hands toxrt: parameter files, markers and
position messages. The contract: a clear rejection (ConfigError / ValueError, a counter) or a
working result, never another exception, never a hang (faulthandler ends a hung run with its
stacks), never a dead receiving thread.
"""
from __future__ import annotations

import faulthandler
import io
import json
import math
import threading
import time
import tomllib
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from toxrt.stream.client import PositionClient
from toxrt.stream.wire import check_position
from toxrt.stream.listen import format_table, listen
from toxrt.config import Config, build_config, config_to_dict, load_config, to_toml
from toxrt.errors import ConfigError, ToxrtError
from toxrt.stream.markers import MarkerReceiver, parse_marker
from toxrt.stream.publish import Publisher
from toxrt.stream.wire import decode, encode
from toxrt.tracking import run_tracking
from toxrt.io.layout import session_folder

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ANY_PORT = "tcp://127.0.0.1:*"
HANG_LIMIT_S = 240  # per test; a hang ends the run with every thread's stack


@pytest.fixture(autouse=True)
def no_hangs():
    faulthandler.dump_traceback_later(HANG_LIMIT_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


HOSTILE_NUMBERS = ["nan", "inf", "-inf", "1e308", "-1e308", "1e18", "-1", "0", "99999", "0.0", "1e-320",
                   "9" * 30, "-0", "3.5", "true", '"x"', "[]", "{}", "[1, [2]]", "1979-05-27", "0x10"]
HOSTILE_STRINGS = ['"a\\nb"', '"\\u0000"', '"../../x"', '"/"', '"' + "é" * 300 + '"', '""', '"\\u202e"', "'lit'",
                   '"tcp://127.0.0.1:99999"', '"tcp://*:5556"', '"sim:"', '"+ Polygon [[0,0],[1e12,0],[0,1]]"',
                   '"- Ellipse {\'center\': [0, 0], \'axes\': [1, 1], \'angle\': nan}"', '"+ Rectangle [[0, 0]]"',
                   '"' + "[" * 300 + '"']


def valid_params() -> str:
    """default.toml with a video and a few lists filled in: every key, each with a valid value."""
    text = (ROOT / "configs" / "default.toml").read_text()
    text = text.replace('video_paths = []', 'video_paths = ["sim:fuzz"]')
    text = text.replace('roi_list = []', 'roi_list = ["+ Rectangle [[0, 0], [300, 200]]", '
                                         '"- Ellipse {\'center\': [10, 10], \'axes\': [5, 3], \'angle\': 30}"]')
    text = text.replace('tracking_intervals = []', 'tracking_intervals = [[0, 10], [20, 30]]')
    text = text.replace('name = ""', 'name = "fuzz"')
    return text


def mutate_text(text: str, rng: np.random.Generator) -> bytes:
    """One to three random edits: bytes flipped or inserted, spans deleted, lines duplicated or
    swapped, values replaced by hostile ones, deep nesting appended."""
    data = bytearray(text.encode())
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(0, 7))
        lines = bytes(data).split(b"\n")
        if op == 0 and data:  # flip bytes (invalid UTF-8 among them)
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        elif op == 1 and data:  # delete a span
            start = int(rng.integers(0, len(data)))
            del data[start:start + int(rng.integers(1, 40))]
        elif op == 2:  # duplicate or swap lines
            i, j = (int(k) for k in rng.integers(0, len(lines), 2))
            if rng.random() < 0.5:
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
        elif op in (3, 4):  # a value replaced by a hostile one
            keyed = [k for k, line in enumerate(lines) if b" = " in line and not line.startswith(b"#")]
            k = keyed[int(rng.integers(0, len(keyed)))]
            key = lines[k].split(b" = ")[0]
            pool = HOSTILE_NUMBERS if op == 3 else HOSTILE_STRINGS
            value = pool[int(rng.integers(0, len(pool)))].encode()
            lines[k] = key + b" = " + value
            data = bytearray(b"\n".join(lines))
        elif op == 5:  # an insertion of random bytes
            at = int(rng.integers(0, len(data) + 1))
            data[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 8)), dtype=np.uint8))
        else:  # nesting deep enough to break a recursive parser
            depth = int(rng.integers(50, 3000))
            data += b"\ndeep = " + b"[" * depth + b"]" * depth + b"\n"
    return bytes(data)


def test_mutated_parameter_files_load_or_fail_with_a_config_error(tmp_path):
    base = valid_params()
    assert isinstance(load_config_text(tmp_path, base.encode()), Config)
    rng = np.random.default_rng(11)
    outcomes = {"accepted": 0, "refused": 0}
    for case in range(3000):
        data = mutate_text(base, rng)
        try:
            config = load_config_text(tmp_path, data)
        except ConfigError as exc:
            assert "\n" not in str(exc).strip() or "TOML syntax error" in str(exc), f"case {case}: {exc}"
            outcomes["refused"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - the finding: report which case
            raise AssertionError(f"case {case}: {type(exc).__name__}: {exc}\n{data[:2000]!r}") from exc
        outcomes["accepted"] += 1
        # What was accepted is written back and read back identically, and stays in its folder.
        assert build_config(tomllib.loads(to_toml(config_to_dict(config)))) == config, f"case {case}"
        assert session_folder(config).parent == Path(config.output_dir or Path.cwd()), f"case {case}"
    assert outcomes["accepted"] > 300 and outcomes["refused"] > 300, outcomes


def load_config_text(folder: Path, data: bytes) -> Config:
    path = folder / "params.toml"
    path.write_bytes(data)
    return load_config(path)


def test_accepted_mutations_of_a_small_session_run_or_fail_with_one_line(tmp_path):
    """Values that pass the schema must not crash a run: a few dozen accepted mutations are tracked."""
    base = (
        'name = "fz"\nvideo_paths = ["sim:fz"]\nnumber_of_animals = 2\nintensity_ths = [0.0, 120.0]\n'
        "area_ths = [20.0, inf]\ntrajectories_formats = [\"npy\", \"csv\"]\n"
        "[segmentation]\nhistogram_bins = 16\ncrossing_area_ratio = 1.6\n"
        "[linking]\nmax_unmatched_frames = 3\nprocess_noise = 1.0\n"
        "[identity]\ndecision_samples = 5\nreference_samples = 64\ngauss_mu = 1.0\ngauss_sigma = 0.05\n"
        "correlation_levels = 20\nfusion_samples = 12\n"
        "[sim]\nframes = 25\nwidth = 128\nheight = 96\nbody_length_px = 12.0\nblur_sigma = 0.7\nfps = 25.0\n"
        "[streaming]\npublish_address = \"\"\nmarker_address = \"\"\n"
    )
    rng = np.random.default_rng(5)
    ran = 0
    for case in range(400):
        lines = base.splitlines()
        keyed = [k for k, line in enumerate(lines) if " = " in line and not line.startswith(("name", "video", "["))]
        k = keyed[int(rng.integers(0, len(keyed)))]
        lines[k] = lines[k].split(" = ")[0] + " = " + HOSTILE_NUMBERS[int(rng.integers(0, len(HOSTILE_NUMBERS)))]
        try:
            config = build_config(tomllib.loads("\n".join(lines)))
        except (ConfigError, tomllib.TOMLDecodeError):
            continue
        config = build_config({**config_to_dict(config), "output_dir": str(tmp_path)})
        if config.sim.frames > 200 or config.sim.width * config.sim.height > 256 * 256:
            continue  # accepted, but too slow for a unit test; the schema's bounds are tested elsewhere
        try:
            run_tracking(config, progress=False, overwrite=True)
        except ToxrtError as exc:
            assert "\n" not in str(exc), f"case {case}: {exc}"
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"case {case}: {lines[k]}: {type(exc).__name__}: {exc}") from exc
        ran += 1
        if ran >= 30:
            break
    assert ran >= 20


# ---------------------------------------------------------------------------------------------
# Markers
# ---------------------------------------------------------------------------------------------

def hostile_value(rng: np.random.Generator, depth: int = 0):
    kind = int(rng.integers(0, 12))
    if kind == 0:
        return bytes(rng.integers(0, 256, int(rng.integers(0, 6)), dtype=np.uint8))
    if kind == 1:
        return msgpack.Timestamp(int(rng.integers(0, 2**31)), 0)
    if kind == 2:
        return msgpack.ExtType(int(rng.integers(0, 100)), b"x")
    if kind == 3 and depth < 40:
        return [hostile_value(rng, depth + 1) for _ in range(int(rng.integers(0, 3)))]
    if kind == 4 and depth < 40:
        return {("k%d" % i if rng.random() < 0.8 else i): hostile_value(rng, depth + 1)
                for i in range(int(rng.integers(0, 3)))}
    if kind == 5:
        return float(rng.choice([math.nan, math.inf, -math.inf, 1e308, -0.0, 0.5]))
    if kind == 6:
        return int(rng.choice([0, -1, 2**63 - 1, -(2**63)]))
    if kind == 7:
        return "".join(chr(int(c)) for c in rng.integers(0, 0x2FF, int(rng.integers(0, 10))))
    if kind == 8:
        return None
    if kind == 9:
        return bool(rng.random() < 0.5)
    return "plain"


def mutated_markers(rng: np.random.Generator, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        message = {"label": rng.choice(["on", "", "toxrt.stop-not", "x" * 10]), "t_sent": time.time(),
                   "payload": {"zone": hostile_value(rng)}}
        if rng.random() < 0.3:
            message[str(rng.integers(0, 5))] = hostile_value(rng)
        if rng.random() < 0.2:
            message.pop("label")
        try:
            data = bytearray(msgpack.packb(message, use_bin_type=True, strict_types=False) if rng.random() < 0.6
                             else json.dumps(message, default=str).encode())
        except (TypeError, ValueError, OverflowError):
            data = bytearray(b"\xc1")
        for _ in range(int(rng.integers(0, 3))):  # byte-level damage on top
            if data:
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        if rng.random() < 0.05:
            depth = int(rng.integers(100, 20000))
            data = bytearray(b'{"label": "deep", "payload": {"x": ' + b"[" * depth + b"]" * depth + b"}}")
        out.append(bytes(data))
    return out


def test_mutated_markers_are_parsed_or_rejected_and_the_channel_survives_them_all():
    rng = np.random.default_rng(23)
    messages = mutated_markers(rng, 3000)
    accepted = 0
    for k, data in enumerate(messages):
        try:
            marker = parse_marker(data, 1.0)
        except ValueError:
            continue
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"marker {k}: {type(exc).__name__}: {exc} {data[:200]!r}") from exc
        json.dumps(marker)  # what was accepted can be recorded in events.jsonl as it is
        accepted += 1
    assert 100 < accepted < len(messages)
    # The same messages over a real socket: every one counted, the stop marker still gets through.
    with MarkerReceiver(ANY_PORT, max_pending=100000) as receiver:
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 10000)
        push.setsockopt(zmq.SNDHWM, 0)
        push.connect(receiver.address)
        for data in messages:
            push.send(data)
        push.send(encode({"label": "toxrt.stop"}))
        push.close()
        got: list[dict] = []
        deadline = time.monotonic() + 60
        while receiver.received + receiver.rejected < len(messages) + 1 and time.monotonic() < deadline:
            got.extend(receiver.drain())
            time.sleep(0.01)
        got.extend(receiver.drain())
        assert receiver.received == accepted + 1 and receiver.rejected == len(messages) - accepted
        assert got[-1]["label"] == "toxrt.stop"
        assert receiver._thread.is_alive()


# ---------------------------------------------------------------------------------------------
# Position messages
# ---------------------------------------------------------------------------------------------

def valid_position(seq: int, n: int) -> dict:
    return {"v": 1, "frame": seq, "seq": seq, "t_capture": time.time(), "t_publish": time.time(), "n": n,
            "id": list(range(1, n + 1)), "fragment": list(range(n)), "x": [1.5] * n, "y": [2.5] * n,
            "heading": [0.1] * n, "area": [100.0] * n, "status": [0] * n, "p": [0.9] * n}


def mutated_positions(rng: np.random.Generator, count: int) -> list[bytes]:
    keys = list(valid_position(0, 1))
    out = []
    for k in range(count):
        message = valid_position(k, int(rng.integers(0, 5)))
        for _ in range(int(rng.integers(0, 3))):
            key = keys[int(rng.integers(0, len(keys)))]
            op = int(rng.integers(0, 4))
            if op == 0:
                message.pop(key, None)
            elif op == 1:
                message[key] = hostile_value(rng)
            elif op == 2 and isinstance(message.get(key), list):
                message[key] = message[key] + [hostile_value(rng)]
            else:
                message[key] = [hostile_value(rng) for _ in range(int(rng.integers(0, 3)))]
        try:
            data = bytearray(msgpack.packb(message, use_bin_type=True, strict_types=False) if rng.random() < 0.6
                             else json.dumps(message, default=str).encode())
        except (TypeError, ValueError, OverflowError):
            data = bytearray(b"\xc1")
        if rng.random() < 0.2 and data:
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        out.append(bytes(data))
    return out


def test_mutated_positions_are_checked_or_rejected_and_clients_keep_receiving():
    rng = np.random.default_rng(31)
    messages = mutated_positions(rng, 3000)
    valid = 0
    for k, data in enumerate(messages):
        try:
            message = decode(data)
            check_position(message)
        except ValueError:
            continue
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"position {k}: {type(exc).__name__}: {exc} {data[:200]!r}") from exc
        format_table(message, {"fps": "x"}, missed=0, now=time.time())  # what passes can be shown
        valid += 1
    assert 100 < valid < len(messages)

    out = io.StringIO()
    with Publisher(ANY_PORT, hwm=100000) as publisher, PositionClient(publisher.address) as client:
        counts: dict = {}
        listener = threading.Thread(target=lambda: counts.update(listen(publisher.address, duration_s=120, out=out,
                                                                        max_frames=valid + 1, refresh_s=1.0)))
        listener.start()
        deadline = time.monotonic() + 30
        while publisher.subscriptions < 2 * 3 and time.monotonic() < deadline:  # 2 clients x 3 topics
            publisher.poll_subscriptions(0.1)
        for k, data in enumerate(messages):
            publisher._socket.send_multipart([b"pos", data])
            if k % 300 == 0:  # let the receivers keep up: nothing is lost to a full queue
                wait_for(lambda: client.received + client.rejected >= k + 1)
        sentinel = valid_position(10**6, 1)
        publisher._socket.send_multipart([b"pos", encode(sentinel)])
        assert client.wait_for_frame(after_seq=10**6 - 1, timeout_s=30) is not None
        listener.join(timeout=60)
        assert client._thread.is_alive()
    assert client.received == valid + 1 and client.rejected == len(messages) - valid
    assert counts["frames"] == valid + 1 and counts["rejected"] == len(messages) - valid


def wait_for(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
