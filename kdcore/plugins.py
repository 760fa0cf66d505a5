"""The plugin manager: built-in plugins, entry-point plugins (group ``kd``) and what they registered.

``KD_LOAD_PLUGINS=a,b`` loads only the named entry-point plugins (an empty value loads none);
``KD_TRACE_PLUGINS=1`` prints every hook call to stderr. A plugin that fails to import or to register
is recorded as broken with its error and never stops the others from loading.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from importlib import import_module, metadata
from typing import Any

import pluggy

from kdcore import hookspecs
from kdcore.tasks import Task

ENTRY_POINT_GROUP = "kd"
DEFAULT_PLUGINS = ("kdcore.builtin.core", "kdcore.builtin.classify")


class PluginError(RuntimeError):
    """A plugin or task the user asked for is unknown or broken."""


@dataclass
class PluginInfo:
    """What ``kd plugins`` shows for one plugin."""

    name: str
    distribution: str
    version: str
    module: str
    tasks: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def broken(self) -> bool:
        return self.error is not None


def new_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager that knows kdcore's hookspecs and nothing else."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    if os.environ.get("KD_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda message: print(message, end="", file=sys.stderr))
        pm.enable_tracing()
    return pm


#: Frames that are never the plugin's own line: this module, pluggy's checks and the import machinery.
_NOT_THE_PLUGIN = (
    __file__,
    os.path.dirname(pluggy.__file__),
    os.path.dirname(importlib.__file__),
    "<frozen ",
)


def _short_error(exc: BaseException) -> str:
    """``Type: message (file.py:line)`` on one line, the location being the plugin's last line involved."""
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_NOT_THE_PLUGIN)
    ]
    where = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {message}{where}"


class Registry:
    """Every plugin kdcore found and everything they registered: tasks, schedules, losses.

    Use :func:`get_registry` for the process-wide one; tests build their own with ``Registry(...)``.
    """

    def __init__(self, builtins: Iterable[str] = DEFAULT_PLUGINS, load_entry_points: bool = True) -> None:
        self.pm = new_plugin_manager()
        self.plugins: dict[str, PluginInfo] = {}
        self.tasks: dict[str, dict[str, Task]] = {}
        self._schedules: dict[str, Callable[..., Any]] = {}
        self._losses: dict[str, Callable[..., Any]] = {}
        self._extras_registered = False
        self._objects: dict[str, object] = {}
        version = _version("kdcore")
        for module_name in builtins:
            name = module_name.rsplit(".", 1)[-1]
            self._add(name, module_name, "kdcore", version, lambda m=module_name: import_module(m))
        if load_entry_points:
            for ep in _allowed_entry_points():
                dist = ep.dist.name if ep.dist else "?"
                ver = ep.dist.version if ep.dist else "?"
                self._add(ep.name, ep.value, dist, ver, ep.load)

    # -- loading -----------------------------------------------------------------------------------
    def _add(self, name: str, module: str, dist: str, version: str, load: Callable[[], object]) -> None:
        info = PluginInfo(name=name, distribution=dist, version=version, module=module)
        taken = self.plugins.get(name)
        if taken is not None:
            # First come keeps the name (built-ins come first): a third-party plugin called "core" or
            # "classify" must not replace, and so break, the plugin every run relies on.
            info.error = (
                f"plugin name {name!r} is already taken by {taken.distribution} {taken.version} "
                f"({taken.module}); rename this entry point"
            )
            key, n = f"{name} ({dist})", 2
            while key in self.plugins:
                key, n = f"{name} ({dist} #{n})", n + 1
            self.plugins[key] = info
            return
        self.plugins[name] = info
        try:
            obj = load()
            self.pm.register(obj, name=name)
        except Exception as exc:
            if self.pm.get_plugin(name) is not None:  # pluggy < 1.7 keeps a plugin that failed validation
                self.pm.unregister(name=name)
            info.error = _short_error(exc)
            return
        try:
            _check_hook_names(self.pm, obj)
            tasks = self._register_tasks(name, obj)
        except Exception as exc:
            self._drop(name, obj, exc)
            return
        self.tasks[name] = tasks
        self._objects[name] = obj
        info.tasks = sorted(tasks)
        info.hooks = sorted(h.name for h in self.pm.get_hookcallers(obj) or [])

    def _drop(self, name: str, obj: object, exc: BaseException) -> None:
        """Mark plugin ``name`` broken by ``exc`` and forget what it registered."""
        self.pm.unregister(obj)
        info = self.plugins[name]
        info.error, info.tasks, info.hooks = _short_error(exc), [], []
        self.tasks.pop(name, None)
        self._objects.pop(name, None)

    def _register_tasks(self, plugin: str, obj: object) -> dict[str, Task]:
        tasks: dict[str, Task] = {}

        def register_task(task: Task) -> None:
            if not isinstance(task, Task):
                raise TypeError(f"register() expects a kdcore.tasks.Task, got {type(task).__name__}")
            if task.name in tasks:
                raise ValueError(f"task {task.name!r} registered twice")
            tasks[task.name] = replace(task, plugin=plugin)

        _call_hook(self.pm, "kd_register_tasks", obj, register_task)
        return tasks

    @property
    def schedules(self) -> dict[str, Callable[..., Any]]:
        """Every registered schedule factory by name (plugins' ``kd_register_schedules``)."""
        self.register_schedules_and_losses()
        return self._schedules

    @property
    def losses(self) -> dict[str, Callable[..., Any]]:
        """Every registered distillation loss by name (plugins' ``kd_register_losses``)."""
        self.register_schedules_and_losses()
        return self._losses

    def register_schedules_and_losses(self) -> None:
        """Call every loaded plugin's ``kd_register_schedules`` and ``kd_register_losses``, once.

        They run on first need, not when the plugins load: kdcore's own import torch, which ``kd plugins``,
        ``kd tasks`` and ``kd --help`` do without. A plugin whose registration fails is marked broken
        (``kd plugins`` then shows why) and what it registered is forgotten.
        """
        if self._extras_registered:
            return
        self._extras_registered = True
        for name, obj in list(self._objects.items()):
            schedules: dict[str, Callable[..., Any]] = {}
            losses: dict[str, Callable[..., Any]] = {}
            register_schedule = _named("schedule", self._schedules, schedules)
            try:
                _call_hook(self.pm, "kd_register_schedules", obj, register_schedule)
                _call_hook(self.pm, "kd_register_losses", obj, _named("loss", self._losses, losses))
            except Exception as exc:
                self._drop(name, obj, exc)
                continue
            self._schedules.update(schedules)
            self._losses.update(losses)

    # -- queries -----------------------------------------------------------------------------------
    def plugin_object(self, name: str) -> object:
        """The loaded plugin module/object called ``name`` (raises :class:`PluginError`)."""
        self._check_plugin(name)
        return self._objects[name]

    def _check_plugin(self, name: str) -> None:
        info = self.plugins.get(name)
        if info is None:
            known = sorted(self.plugins)
            hint = difflib.get_close_matches(name, known, n=1)
            suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
            raise PluginError(
                f"no plugin named {name!r}.{suggestion} Installed: {', '.join(known)}. "
                "Install one with pip, or see `kd plugins`."
            )
        if info.broken:
            raise PluginError(f"plugin {name!r} ({info.distribution} {info.version}) is broken: {info.error}")

    def get_task(self, plugin: str, task: str = "") -> Task:
        """The task ``task`` of ``plugin``; with ``task=""`` the plugin's only (or first-listed) task.

        Every plugin's schedules and losses are registered first: a plugin whose registration fails is
        broken, and its tasks are refused with the reason.
        """
        self.register_schedules_and_losses()
        self._check_plugin(plugin)
        tasks = self.tasks[plugin]
        if not tasks:
            raise PluginError(f"plugin {plugin!r} registers no tasks")
        if not task:
            return next(iter(tasks.values()))
        if task not in tasks:
            hint = difflib.get_close_matches(task, list(tasks), n=1)
            suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
            raise PluginError(
                f"plugin {plugin!r} has no task {task!r}.{suggestion} Its tasks: {', '.join(tasks)}"
            )
        return tasks[task]

    def run_plugin_manager(self, task: Task, extra_plugins: Iterable[str] = ()) -> pluggy.PluginManager:
        """A plugin manager for one run: kdcore's core plugin, the task's plugin, then the extras.

        Later registrations are called first, so the task's plugin overrides the core's defaults and an
        extra plugin overrides both.
        """
        self.register_schedules_and_losses()
        pm = new_plugin_manager()
        for name in dict.fromkeys(["core", task.plugin, *extra_plugins]):
            pm.register(self.plugin_object(name), name=name)
        return pm


def direct_caller(caller: pluggy.HookCaller) -> Callable[..., Any]:
    """A stand-in for ``caller(**kwargs)`` that costs less when at most one plugin implements the hook.

    A call through pluggy checks its arguments, copies the list of implementations and runs its call
    loop: a few microseconds, which a hook called on every training step pays every step (about 2 % of
    a small model's step, BENCHMARKS.md). With no implementation, or one plain one (no wrapper, no
    keyword-only argument), the returned function calls it directly and returns what pluggy would: the
    value for a ``firstresult`` hook, else the list of the values that are not None. On each call it
    checks that the implementations are still the ones it was built for, and calls through pluggy when
    they are not, and always while ``KD_TRACE_PLUGINS`` traces hook calls (monitoring added to the
    plugin manager otherwise, with ``add_hookcall_monitoring``, does not see the direct calls). Keyword
    arguments only, all of the hookspec's, as with pluggy.
    """
    spec = caller.spec
    impls = caller.get_hookimpls()
    first_result = bool(spec is not None and spec.opts.get("firstresult"))
    plain = all(not (impl.hookwrapper or impl.wrapper or impl.kwargnames) for impl in impls)
    defaults = spec is not None and getattr(spec, "kwargdefaults", None)  # pluggy >= 1.7
    if len(impls) > 1 or not plain or defaults or caller.is_historic() or os.environ.get("KD_TRACE_PLUGINS"):
        return caller
    function, argnames = (impls[0].function, impls[0].argnames) if impls else (None, ())
    # an implementation that takes every argument of the hookspec gets the caller's keywords as they are
    takes_all = spec is not None and set(argnames) == set(spec.argnames)

    def call(**kwargs: Any) -> Any:
        if caller.get_hookimpls() != impls:  # a plugin was registered or unregistered since
            return caller(**kwargs)
        if function is None:
            result = None
        elif takes_all:
            result = function(**kwargs)
        else:
            result = function(*[kwargs[name] for name in argnames])
        if first_result:
            return result
        return [] if result is None else [result]

    return call


def _call_hook(pm: pluggy.PluginManager, hook_name: str, obj: object, register: Callable[..., None]) -> None:
    """Call plugin ``obj``'s own implementation of the registration hook ``hook_name``, if it has one."""
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        if impl.plugin is obj:
            impl.function(register=register)


def _named(kind: str, taken: dict, staged: dict) -> Callable[[str, Callable], None]:
    """A ``register(name, factory)`` that refuses a name already taken or staged."""

    def register(name: str, factory: Callable[..., Any]) -> None:
        if name in taken or name in staged:
            raise ValueError(f"{kind} {name!r} is already registered")
        staged[name] = factory

    return register


def _check_hook_names(pm: pluggy.PluginManager, obj: object) -> None:
    """Reject a ``@hookimpl`` whose name is no kd hook (a typo would otherwise never be called)."""
    for caller in pm.get_hookcallers(obj) or []:
        if caller.has_spec():
            continue
        if all(impl.optionalhook for impl in caller.get_hookimpls() if impl.plugin is obj):
            continue
        known = [name for name in dir(hookspecs) if name.startswith("kd_")]
        hint = difflib.get_close_matches(caller.name, known, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(
            f"{caller.name!r} is not a kd hook{suggestion} (the hooks are in kdcore/hookspecs.py)"
        )


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def _allowed_entry_points() -> list[metadata.EntryPoint]:
    entry_points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    allow = os.environ.get("KD_LOAD_PLUGINS")
    if allow is None:
        return entry_points
    wanted = {name.strip() for name in allow.split(",") if name.strip()}
    return [ep for ep in entry_points if ep.name in wanted]


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    if _registry is None:
        _registry = Registry()
    return _registry


def reset_registry() -> None:
    """Forget the process-wide registry (tests call this to get a clean plugin manager)."""
    global _registry
    _registry = None
