"""The JobKind registry: one declaration per kind, read by the API (validation, routing, docs), the workers
(which handler runs it, which queues to consume), the scheduler and the CLI.

A kind is a name, the schemas of its input, params and output, what model it needs (or none), its queue
family, the worker handler by dotted path (so that app/ never imports workers/ or torch), a default time limit
and whether it can be cancelled mid-run or resumed. Each built-in kind is one module of app/kinds/ with a
`KIND` declaration, loaded by name (BUILTIN) through `register`, the one way in; installed packages can add
kinds the same way (entry points), without touching this file.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from app import plugins

if TYPE_CHECKING:
    from app.settings import Settings

# (input, params, settings) -> None; raises app.errors.ApiError for what the schemas cannot say (limits)
Limits = Callable[[BaseModel, BaseModel, "Settings"], None]


@dataclass(frozen=True)
class JobKind:
    name: str
    description: str
    input: type[BaseModel]
    params: type[BaseModel]
    output: type[BaseModel] | None
    model_kind: str | None  # "causal-lm" | "embedding" | "classifier" | ... | None: the job names no model
    handler: str  # "package.module:function" on the worker side
    queue_family: str = ""  # queues are <family>.<gpu type>; default: the kind's name
    default_timeout_s: int | None = None  # None: LLMOS_DEFAULT_TIMEOUT_S
    cancellable: bool = True  # stops between steps when cancelled while running
    resumable: bool = False  # a new attempt goes on from the last one's checkpoint
    public: bool = True  # accepted by POST /jobs (a batch's chunks are not)
    limits: Limits | None = None
    # "module:function" called at submit with (session=, settings=, owner_id=, base=, input=, params=) in the
    # submit's transaction; raises ApiError for what needs the database (files, the base model)
    check: str | None = None
    max_attempts: int = 3
    other_model_kinds: tuple[str, ...] = ()  # more kinds of model the job also runs on

    @property
    def model_kinds(self) -> tuple[str, ...]:
        return (self.model_kind, *self.other_model_kinds) if self.model_kind else ()

    @property
    def queue(self) -> str:
        return self.queue_family or self.name

    def schemas(self) -> dict[str, Any]:
        return {
            "input": self.input.model_json_schema(),
            "params": self.params.model_json_schema(),
            "output": self.output.model_json_schema() if self.output else None,
        }


BUILTIN = (
    "app.kinds.generate:KIND",
    "app.kinds.embed:KIND",
    "app.kinds.finetune:KIND",
    "app.kinds.echo:KIND",
    "app.kinds.batch:KIND",
    "app.kinds.classify:KIND",
    "app.kinds.ner:KIND",
)

log = logging.getLogger(__name__)

_KINDS: dict[str, JobKind] = {}
_PLUGINS: list[plugins.Plugin] = []  # the llmos.kinds entry points found, broken ones with their error
_LOAD_LOCK = threading.Lock()
_LOADED = threading.Event()  # set once every built-in kind is registered: readers never see half a registry


def register(kind: JobKind) -> JobKind:
    if not kind.name.isidentifier() or len(kind.name) > 32:
        raise ValueError(f"kind name {kind.name!r} must be an identifier of at most 32 characters")
    if ":" not in kind.handler:
        raise ValueError(f"kind {kind.name}: handler must be 'module:function', got {kind.handler!r}")
    _KINDS[kind.name] = kind
    return kind


def load(path: str) -> Any:
    """`package.module:attribute` -> the object (kinds' declarations, workers' handlers)."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _loaded() -> dict[str, JobKind]:
    if not _LOADED.is_set():
        with _LOAD_LOCK:
            if not _LOADED.is_set():
                for path in BUILTIN:
                    register(load(path))
                _PLUGINS[:] = [_register_plugin(p) for p in plugins.discover("llmos.kinds")]
                _LOADED.set()
    return _KINDS


def _register_plugin(plugin: plugins.Plugin) -> plugins.Plugin:
    """An installed package's kind, through `register` like the built-in ones; one that is not a JobKind, takes
    a built-in kind's name or fails `register`'s checks is logged and skipped."""
    if plugin.error is not None:
        return plugin
    kind = plugin.obj
    if not isinstance(kind, JobKind):
        return plugins.skip(plugin, f"{plugin.value} is a {type(kind).__name__}, not an app.jobs.kinds.JobKind")
    if kind.name in _KINDS:
        return plugins.skip(plugin, f"kind {kind.name!r} is already registered")
    try:
        register(kind)
    except ValueError as exc:
        return plugins.skip(plugin, str(exc))
    log.info("plugin kind %s registered from %s", kind.name, plugin.package or plugin.value)
    return plugin


def plugin_kinds() -> list[plugins.Plugin]:
    """The llmos.kinds entry points found at load, broken ones with their error."""
    _loaded()
    return list(_PLUGINS)


def reload() -> None:
    """Forget every kind and read the built-in ones and the installed plugins again (tests, after installing)."""
    with _LOAD_LOCK:
        _LOADED.clear()
        _KINDS.clear()
    _loaded()


def get(name: str) -> JobKind | None:
    return _loaded().get(name)


def all_kinds() -> list[JobKind]:
    return list(_loaded().values())


def public_names() -> list[str]:
    return [k.name for k in all_kinds() if k.public]


def queue_families() -> list[str]:
    """Every queue family a worker serving all kinds consumes."""
    return list(dict.fromkeys(k.queue for k in all_kinds()))
