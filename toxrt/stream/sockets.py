"""ZeroMQ sockets as toxrt uses them: binding safely, connecting, receiving in one thread."""
from __future__ import annotations

import errno
import ipaddress
import threading
import time
from typing import Callable, Iterable, Sequence

import zmq

from ..config_checks import zmq_address_problem
from ..errors import ToxrtError


def is_loopback_address(address: str) -> bool:
    """True for ``ipc://``/``inproc://`` and ``tcp://`` on 127.0.0.0/8, ``localhost`` or ``[::1]``."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        return False
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name: reachable from elsewhere
        return False


def bind_socket(socket: zmq.Socket, address: str, allow_remote: bool, key: str) -> str:
    """Bind, refusing non-loopback addresses unless asked for, with one-line errors; returns the
    endpoint bound ("tcp://127.0.0.1:*" picks a free port). On failure the socket is closed."""
    try:
        problem = zmq_address_problem(address)
        if problem:
            raise ToxrtError(f"{key}: {address!r} {problem}")
        if not allow_remote and not is_loopback_address(address):
            raise ToxrtError(f"{key}: {address} is reachable from other machines; bind 127.0.0.1 "
                             f"or set streaming.allow_remote = true to allow it")
        try:
            socket.bind(address)
        except zmq.ZMQError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ToxrtError(f"{key}: {address}: port already in use (another toxrt session or program?)") from None
            raise ToxrtError(f"{key}: cannot bind {address}: {exc.strerror}") from None
    except ToxrtError:
        socket.close(linger=0)
        raise
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


def check_connect_address(address: str) -> str:
    problem = zmq_address_problem(address)
    if problem:
        raise ToxrtError(f"address {address!r} {problem}")
    return address


def connect_subscriber(context: zmq.Context, address: str | Sequence[str], topics: Iterable[bytes]) -> zmq.Socket:
    """A SUB socket connected to one address or to several (one publisher per camera)."""
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    for topic in topics:
        socket.setsockopt(zmq.SUBSCRIBE, topic)
    for one in [address] if isinstance(address, str) else address:
        try:
            socket.connect(one)
        except zmq.ZMQError as exc:
            socket.close(linger=0)
            raise ToxrtError(f"cannot connect to {one}: {exc.strerror}") from None
    return socket


def receive_until(socket: zmq.Socket, stop: threading.Event, handle: Callable[[list[bytes], float], None],
                  poll_ms: int = 100) -> None:
    """Receive multipart messages until ``stop`` is set, calling ``handle(parts, t_arrival)`` for each;
    closes the socket at the end. Run it in the one thread that owns the socket."""
    try:
        while not stop.is_set():
            if not socket.poll(poll_ms, zmq.POLLIN):
                continue
            while True:
                try:
                    parts = socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                handle(parts, time.time())
    finally:
        socket.close(linger=0)
