"""Wake-ups between processes: a job ended (its long-polls return at once), a cancel (its worker stops at
once), a cached key or model to drop. Sent after the commit that caused them; a lost wake-up costs only time,
never correctness, because every listener also has a slow database fallback.

- Redis broker: Redis pub/sub on the broker's server, on channels `llmos:<namespace>:<channel>`; the namespace
  (the broker's Redis database and the database's name) keeps deployments that share a Redis server apart
  (pub/sub ignores Redis database numbers).
- Embedded default (filesystem broker, one machine): Unix datagram sockets in a folder under the temp dir, one
  per listening process; a publisher sends to each.
- Any other broker: no wake-ups (`live` is False); long-polls and workers poll the database instead.

One listener thread per process, started lazily by the first `subscribe` (never at import or app creation).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import secrets
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Listener = Callable[[str], None]


class Bus:
    """Wake-ups within this process only (`live` False: other processes poll the database instead). Every bus
    delivers to this process's own listeners synchronously, so a change is seen here before its request
    returns; the subclasses also reach the other processes."""

    live = False

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}
        self._lock = threading.Lock()
        self._started = False

    def publish(self, notes: Iterable[tuple[str, str]]) -> None:
        for channel, value in notes:
            self._dispatch(channel, value)

    def subscribe(self, channel: str, fn: Listener) -> None:
        with self._lock:
            self._listeners.setdefault(channel, []).append(fn)
            start = not self._started
            self._started = True
        if start:
            self._start()

    def _start(self) -> None:
        pass

    def _dispatch(self, channel: str, value: str) -> None:
        for fn in list(self._listeners.get(channel, ())):
            try:
                fn(value)
            except Exception:  # noqa: BLE001 - one bad listener must not silence the others
                log.exception("signal listener for %s failed", channel)

    def close(self) -> None:
        pass


class RedisBus(Bus):
    live = True

    def __init__(self, url: str, namespace: str = "") -> None:
        super().__init__()
        self.url = url
        self.prefix = f"llmos:{namespace}:" if namespace else "llmos:"
        self._client: Any = None
        self._stop = threading.Event()
        self._ready = threading.Event()

    def _redis(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        return self._client

    def publish(self, notes: Iterable[tuple[str, str]]) -> None:
        notes = list(notes)
        if not notes:
            return
        super().publish(notes)
        try:
            pipe = self._redis().pipeline(transaction=False)
            for channel, value in notes:
                pipe.publish(self.prefix + channel, value)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis down: listeners fall back to the database
            log.warning("signals not sent (%s); listeners fall back to polling", exc.__class__.__name__)

    def _start(self) -> None:
        threading.Thread(target=self._listen, name="signals", daemon=True).start()
        # the first long-poll of a process must not miss a wake-up sent while its subscription was on the way
        self._ready.wait(2.0)

    def _listen(self) -> None:
        import redis

        failing = False
        while not self._stop.is_set():
            try:
                client = redis.Redis.from_url(self.url, socket_connect_timeout=2, health_check_interval=10)
                pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.psubscribe(self.prefix + "*")
                pubsub.get_message(timeout=1.0)  # the server's confirmation: from here on nothing is missed
                self._ready.set()
                if failing:
                    log.info("signals listener reconnected")
                failing = False
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=1.0)
                    if msg and msg.get("type") == "pmessage":
                        channel = msg["channel"].decode().removeprefix(self.prefix)
                        self._dispatch(channel, msg["data"].decode())
            except Exception as exc:  # noqa: BLE001 - reconnect after a Redis restart
                if not failing:
                    log.warning("signals listener lost Redis (%s); reconnecting", exc.__class__.__name__)
                failing = True
                self._stop.wait(1.0)

    def close(self) -> None:
        self._stop.set()


class SocketBus(Bus):
    """Unix datagram sockets, one per listening process, in a folder named after the data directory."""

    live = True

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
        self.folder = Path(tempfile.gettempdir()) / f"llmos-{digest}"
        self._sock: socket.socket | None = None
        self._path: Path | None = None
        self._send = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._send.setblocking(False)

    def publish(self, notes: Iterable[tuple[str, str]]) -> None:
        notes = list(notes)
        super().publish(notes)
        payloads = [f"{c}\n{v}".encode() for c, v in notes]
        if not payloads or not self.folder.is_dir():
            return
        for path in self.folder.glob("*.sock"):
            if path == self._path:
                continue
            for data in payloads:
                try:
                    self._send.sendto(data, str(path))
                except (ConnectionRefusedError, FileNotFoundError):  # its process is gone
                    with contextlib.suppress(OSError):
                        path.unlink()
                    break
                except (BlockingIOError, OSError):  # its buffer is full: it will poll the database
                    break

    def _start(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._path = self.folder / f"{os.getpid()}-{secrets.token_hex(4)}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self._path))
        self._sock = sock
        threading.Thread(target=self._listen, args=(sock,), name="signals", daemon=True).start()

    def _listen(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(4096)
            except OSError:
                return
            channel, _, value = data.decode(errors="replace").partition("\n")
            self._dispatch(channel, value)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()


def bus_for(broker_url: str, data_dir: Path, database_url: str = "") -> Bus:
    if broker_url.startswith(("redis://", "rediss://")):
        redis_db = broker_url.rsplit("/", 1)[-1].split("?")[0] if broker_url.count("/") >= 3 else "0"
        database = database_url.rsplit("/", 1)[-1].split("?")[0]
        return RedisBus(broker_url, f"{redis_db or '0'}:{database}")
    if broker_url.startswith("filesystem") and hasattr(socket, "AF_UNIX"):
        return SocketBus(data_dir)
    return Bus()


class Waiters:
    """Long-poll waiters of this process, woken by the `ended` signal of their job. At most `limit` wait at once
    (each holds a server thread): `slot()` says whether one more may."""

    def __init__(self, bus: Bus, channel: str, limit: int = 0) -> None:
        self.bus = bus
        self.channel = channel
        self._lock = threading.Lock()
        self._waiting: dict[str, list[threading.Event]] = {}
        self._subscribed = False
        self._slots = threading.BoundedSemaphore(limit) if limit > 0 else None

    @contextlib.contextmanager
    def slot(self) -> Iterator[bool]:
        """True (and a slot held until the block ends) when one more long-poll may wait here; False when the
        process already holds `limit` of them: the caller answers at once instead of taking another thread."""
        got = self._slots.acquire(blocking=False) if self._slots is not None else True
        try:
            yield got
        finally:
            if got and self._slots is not None:
                self._slots.release()

    @contextlib.contextmanager
    def watch(self, key: str) -> Iterator[threading.Event]:
        """Register before reading the job, so an end between the read and the wait is never missed."""
        if not self._subscribed:
            with self._lock:
                if not self._subscribed:
                    self.bus.subscribe(self.channel, self._wake)
                    self._subscribed = True
        ev = threading.Event()
        with self._lock:
            self._waiting.setdefault(key, []).append(ev)
        try:
            yield ev
        finally:
            with self._lock:
                evs = self._waiting.get(key, [])
                if ev in evs:
                    evs.remove(ev)
                if not evs:
                    self._waiting.pop(key, None)

    def waiting(self, key: str) -> int:
        """How many long-polls of this process wait for `key` now."""
        with self._lock:
            return len(self._waiting.get(key, ()))

    def _wake(self, key: str) -> None:
        with self._lock:
            evs = list(self._waiting.get(key, ()))
        for ev in evs:
            ev.set()


TOKENS = "tokens"  # a streaming job's text as it is generated: "<job id>\n<offset>\n<text>"
PIECE = 1000  # characters per message (a datagram on the embedded default holds 4 KiB)


def token_notes(job_id: str, offset: int, text: str) -> list[tuple[str, str]]:
    """The messages that carry `text`, which starts at character `offset` of the job's output."""
    return [(TOKENS, f"{job_id}\n{offset + i}\n{text[i:i + PIECE]}") for i in range(0, len(text), PIECE)]


class Streams:
    """The streaming jobs this process is answering: each gets (offset, text) pieces as its worker publishes
    them, and None when the job has ended. Pieces can be lost (pub/sub): the reader fills any gap from the
    job's final output, so a lost piece costs only smoothness."""

    def __init__(self, bus: Bus, ended_channel: str) -> None:
        self.bus = bus
        self.ended_channel = ended_channel
        self._lock = threading.Lock()
        self._queues: dict[str, queue.SimpleQueue[tuple[int, str] | None]] = {}
        self._subscribed = False

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[queue.SimpleQueue[tuple[int, str] | None]]:
        """Register before the job is published, so that its first piece is never missed."""
        with self._lock:
            if not self._subscribed:
                self.bus.subscribe(TOKENS, self._piece)
                self.bus.subscribe(self.ended_channel, self._ended)
                self._subscribed = True
            q: queue.SimpleQueue[tuple[int, str] | None] = queue.SimpleQueue()
            self._queues[job_id] = q
        try:
            yield q
        finally:
            with self._lock:
                self._queues.pop(job_id, None)

    def _piece(self, value: str) -> None:
        job_id, offset, text = value.split("\n", 2)
        q = self._queues.get(job_id)
        if q is not None:
            q.put((int(offset), text))

    def _ended(self, job_id: str) -> None:
        q = self._queues.get(job_id)
        if q is not None:
            q.put(None)
