"""Plugins: installed packages that add to LLM OS through Python entry points, found with importlib.metadata.

Groups (the entry point's name is what it adds; its object is `module:attribute`):
- `llmos.kinds`: a `JobKind` (app.jobs.kinds), registered through `kinds.register` like the built-in ones;
- `llmos.loaders`: a model loader for registry entries whose `source_type` is the entry point's name (an object
  with `materialise(*, name, source, config, model_dir) -> Path`; read by workers only);
- `llmos.hooks`: a callable `hook(event: dict) -> None` that a worker calls after each job it ran ends, with
  {"job_id", "kind", "status", "error_code"}; what it raises is logged and ignored.

A plugin that cannot be imported, or names the wrong kind of object, is logged and skipped: it never stops the
API or a worker. `llmos plugins list` shows what was found and what was skipped, with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

log = logging.getLogger("llmos.plugins")

GROUPS = ("llmos.kinds", "llmos.loaders", "llmos.hooks")


@dataclass(frozen=True)
class Plugin:
    group: str
    name: str
    value: str  # "module:attribute"
    package: str | None  # the distribution that declares it
    obj: Any = None  # the loaded object; None when broken
    error: str | None = None  # why it was skipped


def _package(ep: EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else None


def discover(group: str) -> list[Plugin]:
    """Every entry point of `group`, loaded; one that fails to load is returned with its error, and logged."""
    found = []
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            obj, error = ep.load(), None
        except Exception as exc:  # a broken plugin must never take the process down
            obj, error = None, f"{exc.__class__.__name__}: {exc}"
        error = error or _wrong_shape(group, obj)
        plugin = Plugin(group, ep.name, ep.value, _package(ep), None if error else obj, error)
        if error:
            skip(plugin, error)
        found.append(plugin)
    return found


def _wrong_shape(group: str, obj: Any) -> str | None:
    """Why a loaded loader or hook cannot be one (kinds are checked by the registry, which knows JobKind)."""
    if group == "llmos.loaders" and not callable(getattr(obj, "materialise", None)):
        return f"{obj!r} has no materialise(*, name, source, config, model_dir) method"
    if group == "llmos.hooks" and not callable(obj):
        return f"{obj!r} is not callable"
    return None


def skip(plugin: Plugin, error: str) -> Plugin:
    """Log a plugin that cannot be used; returns it with the error recorded."""
    log.error("plugin %s (%s = %s, from %s) skipped: %s", plugin.group, plugin.name, plugin.value,
              plugin.package or "?", error)
    return Plugin(plugin.group, plugin.name, plugin.value, plugin.package, None, error)
