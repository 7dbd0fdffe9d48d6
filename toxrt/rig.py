"""Several cameras live at once: one ``toxrt track`` process per camera, started, watched and
stopped together (``toxrt rig RIG.toml``, or ``toxrt track --load P.toml --cameras ...``).

A rig file lists the cameras (``configs/rig.toml`` documents every key)::

    params = "params.toml"          # parameter file of every camera, relative to this file
    [[camera]]
    name = "left"                   # names its sessions and the "camera" field of its messages
    source = "camera:0"             # one video_paths entry: camera:N, a stream URL, a file, sim:NAME

Each camera publishes on its own port: the parameter file's ``streaming.publish_address`` and
``marker_address`` ports plus 2 x its position in the list (5556/5557, 5558/5559, ...) unless it
names its own. Files and the simulated arena are replayed in real time, as a camera would deliver
them. Sessions are named ``<camera>_<start time>`` so that no run overwrites another; each
process's output goes to ``<session folder>.log``. One process per camera keeps a stalled camera
or a crash in one tracker from touching the others, and uses one core per camera.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TextIO

import zmq

from .config import load_config
from .config_checks import is_file_spec
from .errors import ConfigError
from .io.layout import SESSION_JSON

NAME_PATTERN = r"[A-Za-z0-9_.-]+"
CAMERA_KEYS = ("name", "source", "params", "publish_address", "marker_address")
STOPPED_BY_SIGNAL = 130  # `toxrt track` stopped before its loop started (-SIGTERM: while exiting)


@dataclass(frozen=True)
class RigCamera:
    name: str
    source: str  # one video_paths entry
    params: str  # parameter file (absolute)
    publish_address: str = ""  # "" = derived from the parameter file
    marker_address: str = ""


def load_rig(path: str | Path) -> tuple[list[RigCamera], str]:
    """The cameras of a rig file and its output_dir ("" = as the parameter files say)."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: rig file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the rig file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    unknown = set(values) - {"params", "output_dir", "camera"}
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r} (known: params, output_dir, [[camera]])")
    base = path.resolve().parent
    tables = values.get("camera", [])
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{path}: no [[camera]] table")
    cameras = []
    for i, table in enumerate(tables):
        key = f"{path}: camera[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{key}: expected a [[camera]] table")
        for name, value in table.items():
            if name not in CAMERA_KEYS:
                raise ConfigError(f"{key}: unknown key {name!r} (known: {', '.join(CAMERA_KEYS)})")
            if not isinstance(value, str):
                raise ConfigError(f"{key}.{name}: expected a string, got {value!r}")
        if "source" not in table:
            raise ConfigError(f"{key}: 'source' is missing (camera:N, a stream URL, a video file or sim:NAME)")
        params = table.get("params") or _string(values, "params", path)
        if not params:
            raise ConfigError(f"{key}: no parameter file (set params at the top or in the camera)")
        cameras.append(RigCamera(table.get("name", f"cam{i}"), _resolve(table["source"], base),
                                 str(base / params), table.get("publish_address", ""),
                                 table.get("marker_address", "")))
    output_dir = _string(values, "output_dir", path)
    return cameras, str(base / output_dir) if output_dir else ""


def _string(values: dict, key: str, path: Path) -> str:
    value = values.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(f"{path}: {key}: expected a string, got {value!r}")
    return value


def _resolve(source: str, base: Path) -> str:
    """Files relative to the rig file; cameras, streams and sim: as they are."""
    return str(base / source) if is_file_spec(source) else source


def cameras_from_specs(params: str, specs: Sequence[str]) -> list[RigCamera]:
    """``toxrt track --cameras``: ``NAME=SOURCE`` or ``SOURCE`` (named cam0, cam1, ...)."""
    cameras = []
    for i, spec in enumerate(specs):
        name, sep, source = spec.partition("=")
        if not sep or not is_file_spec(name):  # "camera:0", "sim:x", "rtsp://..." have no name
            name, source = f"cam{i}", spec
        cameras.append(RigCamera(name, _resolve(source, Path.cwd()), str(Path(params).resolve())))
    return cameras


def shifted(address: str, step: int, name: str) -> str:
    """``tcp://host:5556`` shifted by ``step`` ports; other schemes get ``-name`` appended."""
    if not address or step == 0:
        return address
    match = re.fullmatch(r"(tcp://.+):(\d+)", address)
    if match:
        return f"{match[1]}:{int(match[2]) + step}"
    return f"{address}-{name}"


@dataclass(frozen=True)
class CameraPlan:
    camera: RigCamera
    command: list[str]
    session: Path
    publish_address: str


def plan_cameras(cameras: Sequence[RigCamera], output_dir: str = "", overrides: dict | None = None,
                 extra: Sequence[str] = (), stamp: str | None = None) -> list[CameraPlan]:
    """Each camera's ``toxrt track`` command, checked by loading its configuration here first.

    ``extra`` are ``toxrt track`` flags given to every camera, ``overrides`` the same parsed.
    """
    from .io.layout import session_folder

    stamp = stamp or time.strftime("%Y%m%d_%H%M%S")
    names = [c.name for c in cameras]
    plans, used = [], {}
    for i, camera in enumerate(cameras):
        if not re.fullmatch(NAME_PATTERN, camera.name) or names.count(camera.name) > 1:
            raise ConfigError(f"camera name {camera.name!r}: give each camera a distinct name of letters, "
                              "digits, '_', '.', '-'")
        base = load_config(camera.params, overrides).streaming
        values: dict[str, Any] = {
            "video_paths": [camera.source], "name": f"{camera.name}_{stamp}", "streaming.camera": camera.name,
            "streaming.realtime": True,
            "streaming.publish_address": camera.publish_address or shifted(base.publish_address, 2 * i, camera.name),
            "streaming.marker_address": camera.marker_address or shifted(base.marker_address, 2 * i, camera.name),
        }
        if output_dir:
            values["output_dir"] = output_dir
        for key in ("streaming.publish_address", "streaming.marker_address"):
            if values[key] and values[key] in used:
                raise ConfigError(f"cameras {used[values[key]]} and {camera.name}: both use {values[key]}")
            used[values[key]] = camera.name
        config = load_config(camera.params, {**(overrides or {}), **values})  # the camera's own, checked
        flags = [f for key, value in values.items() for f in (f"--{key}", json.dumps(value))]  # JSON: TOML too
        command = [sys.executable, "-m", "toxrt", "track", "--quiet", "--load", camera.params, *extra, *flags]
        plans.append(CameraPlan(camera, command, session_folder(config), config.streaming.publish_address))
    return plans


class CameraProcess:
    """One camera's ``toxrt track``, in a session of its own so that Ctrl+C in the terminal reaches
    only the rig, which then stops each camera once (a second signal would stop it at once)."""

    def __init__(self, plan: CameraPlan):
        self.plan = plan
        self.log_path = plan.session.with_name(plan.session.name + ".log")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(plan.command, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        self.stop_sent = False

    def stop(self) -> None:
        if self.process.poll() is None and not self.stop_sent:
            self.process.send_signal(signal.SIGTERM)  # `toxrt track` finishes its session on SIGTERM
            self.stop_sent = True

    def state(self) -> str:
        code = self.process.poll()
        if code is None:
            return "stopping" if self.stop_sent else "running"
        if code == 0 or (self.stop_sent and code in (STOPPED_BY_SIGNAL, -signal.SIGTERM)):
            return "stopped" if self.stop_sent else "finished"
        return f"failed ({code})"

    def failed(self) -> bool:
        return self.state().startswith("failed")

    def last_line(self) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def close(self, timeout_s: float) -> None:
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()  # the recording keeps what it flushed (at most a second is lost)
            self.process.wait()
        self._log.close()


def status_table(processes: Sequence[CameraProcess], statuses: dict[str, dict]) -> str:
    lines = [f"{'camera':<12} {'state':<11} {'frames':>8} {'fps':>6} {'latency ms':>10} {'dropped':>9} "
             f"{'animals':>7}  session"]
    for proc in processes:
        name, st = proc.plan.camera.name, statuses.get(proc.plan.camera.name, {})
        state = proc.state()

        def num(key: str, fmt: str) -> str:
            return format(st[key], fmt) if isinstance(st.get(key), (int, float)) else "-"
        dropped = f"{st.get('dropped_publish', '-')}+{st.get('dropped_source', '-')}" if st else "-"
        lines.append(f"{name:<12} {state:<11} {num('frames', 'd'):>8} {num('fps', '.1f'):>6} "
                     f"{num('latency_ms_p50', '.1f'):>10} {dropped:>9} {num('animals', 'd'):>7}  {proc.plan.session}")
        if proc.failed():
            lines.append(f"{'':<12} {proc.last_line()}")
    return "\n".join(lines)


def run_rig(plans: Sequence[CameraPlan], duration_s: float | None = None, out: TextIO | None = None,
            refresh_s: float = 1.0, stop_timeout_s: float = 60.0) -> int:
    """Start every camera, show their status until all have ended, ``duration_s`` has passed or
    Ctrl+C / SIGTERM, then stop them. 0 when no camera failed, else 1."""
    from .stream.wire import TOPIC_STATUS, decode

    out = out or sys.stdout
    clear = "\x1b[H\x1b[J" if getattr(out, "isatty", lambda: False)() else ""
    socket = zmq.Context.instance().socket(zmq.SUB)  # status only: a "pos" subscriber is what
    socket.setsockopt(zmq.LINGER, 0)                 # wait_for_subscriber_s waits for
    socket.setsockopt(zmq.SUBSCRIBE, TOPIC_STATUS)
    for plan in plans:
        if plan.publish_address:
            socket.connect(plan.publish_address)
    processes: list[CameraProcess] = []
    statuses: dict[str, dict] = {}
    deadline = None if duration_s is None else time.monotonic() + duration_s
    # Both stop the rig, even when it was started with SIGINT ignored (a background job of a
    # non-interactive shell inherits that, and Python then never raises KeyboardInterrupt).
    previous = {signum: signal.signal(signum, _raise_interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for plan in plans:
            processes.append(CameraProcess(plan))
            out.write(f"started {plan.camera.name}: {plan.camera.source} -> {plan.session} "
                      f"(positions on {plan.publish_address or 'nothing'})\n")
        shown = time.monotonic()
        while any(p.process.poll() is None for p in processes):
            if deadline is not None and time.monotonic() >= deadline:
                break
            if socket.poll(100, zmq.POLLIN):
                try:
                    message = decode(socket.recv_multipart()[-1])
                    statuses[message.get("camera", "")] = message
                except ValueError:
                    pass
            if time.monotonic() - shown >= refresh_s:
                shown = time.monotonic()
                out.write(clear + status_table(processes, statuses) + "\n\n")
                out.flush()
    except KeyboardInterrupt:
        out.write("stopping every camera (each finishes its session)\n")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for proc in processes:
            proc.stop()
        for proc in processes:
            proc.close(stop_timeout_s)
        socket.close(linger=0)
    for proc in processes:  # the final counts: the last status can be up to a second old
        summary = _summary(proc.plan.session)
        if summary.get("frames") is not None:
            statuses[proc.plan.camera.name] = {**statuses.get(proc.plan.camera.name, {}),
                                               "frames": summary["frames"], "fps": summary.get("fps")}
    out.write(status_table(processes, statuses) + "\n")
    for proc in processes:
        out.write(f"{proc.plan.camera.name}: log {proc.log_path}\n")
    return 1 if any(p.failed() for p in processes) else 0


def _summary(session: Path) -> dict:
    try:
        return json.loads((session / SESSION_JSON).read_text()).get("summary") or {}
    except (OSError, ValueError):
        return {}


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

def add_parser(commands: Any) -> None:
    rig = commands.add_parser("rig", help="track several cameras live at once, one process each",
                              description="Starts one `toxrt track` per camera of RIG.toml, shows their "
                                          "status, and stops them all on Ctrl+C. See docs/batch.md.")
    rig.add_argument("rig", help="rig file (TOML): params and [[camera]] tables")
    rig.add_argument("--duration", type=float, default=None, help="stop every camera after this many seconds")
    rig.set_defaults(run=cmd_rig)


def cmd_rig(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise ConfigError(f"unexpected arguments {' '.join(extra)}")
    cameras, output_dir = load_rig(args.rig)
    return run_rig(plan_cameras(cameras, output_dir), duration_s=args.duration)


def addresses_of(rig_path: str) -> list[str]:
    """The publish addresses of a rig file's cameras (for ``toxrt listen --rig``)."""
    cameras, output_dir = load_rig(rig_path)
    return [plan.publish_address for plan in plan_cameras(cameras, output_dir) if plan.publish_address]


__all__ = ["RigCamera", "CameraPlan", "load_rig", "cameras_from_specs", "plan_cameras", "run_rig"]
