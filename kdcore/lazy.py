"""Functions named by their import path and imported on first call, so that plugins load quickly.

``kd plugins``, ``kd tasks`` and ``kd --help`` load every installed plugin; a plugin whose module imports
torch, MONAI or pandas at the top makes each of them take seconds. A plugin keeps its entry module light
by registering its task with :func:`lazy` references instead of the functions themselves::

    Task(name="transfer", build_data=lazy("kd_sensor.data:build_task_data"),
         build_model=lazy("kd_sensor.models:build_model"), ...)

The module is imported when the task is first used, by ``kd train`` or ``kd eval``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

__all__ = ["LazyFunction", "lazy", "resolve"]


class LazyFunction:
    """A callable ``package.module:function`` imported on its first call (or :meth:`resolve`).

    Keyword arguments given to :func:`lazy` are bound first, as with ``functools.partial``. Two lazy
    functions are equal when they name the same target with the same bound arguments; they pickle by
    name (DataLoader workers re-import the function). ``inspect.signature`` sees the target's signature.
    """

    __slots__ = ("_function", "bound", "target")

    def __init__(self, target: str, **bound: Any) -> None:
        module, _, attribute = target.partition(":")
        if not module or not attribute or not all(part.isidentifier() for part in attribute.split(".")):
            raise ValueError(f"lazy({target!r}): expected 'package.module:function'")
        self.target, self.bound = target, bound
        self._function: Callable[..., Any] | None = None

    def resolve(self) -> Callable[..., Any]:
        """The target function, imported once.

        Raises:
            ImportError: the module cannot be imported (the message names the target).
            AttributeError: the module has no such attribute.
        """
        if self._function is None:
            module_name, _, attribute = self.target.partition(":")
            try:
                found: Any = import_module(module_name)
            except ImportError as exc:
                raise ImportError(f"lazy({self.target!r}): cannot import {module_name}: {exc}") from exc
            for part in attribute.split("."):
                if not hasattr(found, part):
                    raise AttributeError(f"lazy({self.target!r}): {module_name} has no attribute {attribute}")
                found = getattr(found, part)
            if not callable(found):
                raise TypeError(f"lazy({self.target!r}): {attribute} is not callable")
            self._function = found
        return self._function

    @property
    def __wrapped__(self) -> Callable[..., Any]:
        return self.resolve()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **self.bound, **kwargs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LazyFunction):
            return NotImplemented
        return (self.target, self.bound) == (other.target, other.bound)

    def __hash__(self) -> int:
        return hash((self.target, tuple(sorted(self.bound))))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.target, self.bound))

    def __repr__(self) -> str:
        bound = "".join(f", {name}={value!r}" for name, value in self.bound.items())
        return f"lazy({self.target!r}{bound})"


def _rebuild(target: str, bound: dict[str, Any]) -> LazyFunction:
    return LazyFunction(target, **bound)


def lazy(target: str, **bound: Any) -> LazyFunction:
    """The function at ``target`` (``"package.module:function"``), imported on its first call, with
    ``bound`` keyword arguments (``lazy("kdcore.losses:hard_label_ce", ignore_index=-1)``)."""
    return LazyFunction(target, **bound)


def resolve(function: Callable[..., Any]) -> Callable[..., Any]:
    """The function behind ``function``: a :class:`LazyFunction`'s target (imported now, without its bound
    arguments), anything else as it is. For identity checks such as ``resolve(task.evaluate) is mine``."""
    return function.resolve() if isinstance(function, LazyFunction) else function
