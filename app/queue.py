"""The Celery app object, queue names and publishing. Importable without torch."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from kombu import Exchange, Queue
from kombu.transport import redis as kredis
from kombu.utils.uuid import uuid

from app.settings import Settings

if TYPE_CHECKING:
    from flask import Flask

RUN_JOB_TASK = "llmos.run_job"
EXCHANGE = Exchange("llmos", type="direct", durable=True)
MAX_PRIORITY = 9

# Normalised GPU types a job may ask for; `any` reaches every worker of the kind.
GPU_TYPES = (
    "h200", "h100", "gh200", "b200", "a100-80gb", "a100-40gb", "l40s", "l40", "l4", "a10g", "a10",
    "a6000", "rtx4090", "rtx3090", "v100", "t4", "mps", "cpu",
)  # fmt: skip
ANY = "any"


class _RedisChannel(kredis.Channel):
    """kombu's Redis channel, keeping one client object per channel for publishing: the stock one builds a new
    redis.Redis (response callbacks and all) for every message it sends, two thirds of a publish's time here.
    The client is thread-safe (it takes connections from the channel's pool); consuming is unchanged."""

    _publish_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        if self._publish_client is None:
            self._publish_client = super()._create_client()
        return self._publish_client


class RedisTransport(kredis.Transport):
    Channel = _RedisChannel


def queue_name(kind: str, gpu_type: str) -> str:
    return f"{kind}.{gpu_type}"


def make_queue(name: str) -> Queue:
    """The one declaration of a queue, shared by publisher and worker (RabbitMQ refuses mismatched args).
    A new object each time: kombu binds a Queue to the channel it was declared on, so a shared one would carry
    a dead channel into the next connection (a test caught jobs never published after a second app started)."""
    return Queue(name, EXCHANGE, routing_key=name, durable=True, max_priority=MAX_PRIORITY)


def worker_queues(kinds: list[str], gpu_type: str) -> list[str]:
    return [queue_name(kind, t) for kind in kinds for t in (gpu_type, ANY)]


def broker_priority(broker_url: str, priority: int) -> int:
    """API priority 0-9, 9 most urgent. Redis pops the lowest number first; AMQP the highest."""
    if broker_url.startswith(("redis", "rediss", "sentinel")):
        return MAX_PRIORITY - priority
    return priority


def celery_config(settings: Settings) -> dict[str, Any]:
    url = settings.broker_url
    transport_options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_s}
    extra: dict[str, Any] = {}
    if url.startswith(("redis", "rediss", "sentinel")):
        transport_options.update(
            queue_order_strategy="priority", priority_steps=list(range(MAX_PRIORITY + 1)), sep=":"
        )
    if url.startswith(("redis://", "rediss://")):
        extra["broker_transport"] = "app.queue:RedisTransport"
    if url.startswith("filesystem"):
        folder = str(settings.broker_dir / "queue")
        transport_options.update(
            data_folder_in=folder,
            data_folder_out=folder,
            control_folder=str(settings.broker_dir / "control"),
            store_processed=False,
        )
    return {
        "broker_url": url,
        "broker_transport_options": transport_options,
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_exchange": EXCHANGE.name,
        "task_default_exchange_type": "direct",
        "task_queue_max_priority": MAX_PRIORITY,
        "task_default_priority": broker_priority(url, 5),
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_enable_remote_control": not url.startswith("filesystem"),
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        **extra,
    }


def celery_init_app(app: Flask, settings: Settings) -> Celery:
    """Attach a Celery app to a Flask app; tasks run inside the Flask app context."""

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    if settings.broker_url.startswith("filesystem"):
        for sub in ("queue", "control"):
            (settings.broker_dir / sub).mkdir(parents=True, exist_ok=True)
    celery = Celery(app.name, task_cls=FlaskTask)
    celery.conf.update(celery_config(settings))
    celery.set_default()
    app.extensions["celery"] = celery
    return celery


class Publisher:
    """Sends run-job messages to the queue a job was routed to.

    Each message is the one `Celery.send_task` would build (`amqp.create_task_message`: protocol 2 headers,
    body, correlation id and reply-to) and is published with kombu's `Producer.publish` the way Celery's
    `send_task_message` does it: to the default exchange with the queue's name as routing key, persistent, with
    the publish retry policy (`retry=True` reconnects and revives the producer), the queue declared first. What
    it skips is per-message work that gives nothing here: routing (the queue is explicit), the task registry,
    signals nobody connects, the result object, taking a producer out of Celery's pool (which re-binds it to a
    channel each time), and re-binding and re-checking the queue's declaration on every message. Producers stay
    bound to their channel in a small free list, and a queue is declared once per channel (again after a
    reconnect: a new channel)."""

    KEEP = 16  # idle producers (each with its own broker connection) kept per process

    def __init__(self, celery: Celery, broker_url: str) -> None:
        self.celery = celery
        self.broker_url = broker_url
        self._idle: list[_BoundProducer] = []
        self._pid = os.getpid()

    def publish(self, *, job_id: str, queue: str, priority: int) -> None:
        if self._pid != os.getpid():  # forked: the parent's connections are not this process's to use
            self._idle, self._pid = [], os.getpid()
        try:
            bound = self._idle.pop()  # list.pop / append are atomic: no lock for the free list
        except IndexError:
            bound = _BoundProducer(self.celery)
        try:
            bound.send(job_id=job_id, queue=queue, priority=broker_priority(self.broker_url, priority))
        except BaseException:
            bound.close()  # what failed beyond the retry policy is not reused
            raise
        if len(self._idle) < self.KEEP:
            self._idle.append(bound)
        else:
            bound.close()

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for bound in idle:
            bound.close()

    def queue_depth(self, queue: str) -> int | None:
        """Messages waiting in a queue (all priority levels), or None when the broker cannot say. Declares the
        queue: one the broker forgot (restart) holds nothing."""
        try:
            with self.celery.connection_for_write() as conn:
                _name, count, _consumers = make_queue(queue).bind(conn.default_channel).queue_declare()
                return int(count)
        except Exception:  # noqa: BLE001 - absent queue or broker down: unknown, never "empty"
            return None


class _BoundProducer:
    """A kombu producer on its own broker connection, and the queues declared on its current channel."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery
        self.connection = celery.connection_for_write()
        self.producer = celery.amqp.Producer(self.connection, auto_declare=False)
        self.declared: dict[str, Queue] = {}
        self.channel: Any = None
        conf = celery.conf
        self.retry_policy = dict(conf.task_publish_retry_policy or {})
        self.serializer = conf.task_serializer
        self.compression = conf.task_compression
        self.delivery_mode = EXCHANGE.delivery_mode or conf.task_default_delivery_mode

    def send(self, *, job_id: str, queue: str, priority: int) -> None:
        producer = self.producer
        if producer.channel is not self.channel:  # first use, or revived on a new channel after a reconnect
            self.channel, self.declared = producer.channel, {}
        declare = [] if queue in self.declared else [self.declared.setdefault(queue, make_queue(queue))]
        task_id = uuid()
        headers, properties, body, _sent_event = self.celery.amqp.create_task_message(
            task_id, RUN_JOB_TASK, [job_id], None, reply_to=self.celery.thread_oid, ignore_result=None,
            argsrepr=f"[{job_id!r}]", kwargsrepr="{}",  # what Celery would otherwise compute with saferepr
        )
        try:
            producer.publish(body, exchange="", routing_key=queue, serializer=self.serializer,
                             compression=self.compression, retry=True, retry_policy=self.retry_policy,
                             delivery_mode=self.delivery_mode, declare=declare, headers=headers, priority=priority,
                             **properties)
        except BaseException:
            self.declared.pop(queue, None)
            raise

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a connection that is already gone
            self.connection.release()
