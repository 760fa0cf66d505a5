"""kdcore: knowledge distillation for PyTorch with a small core and domain plugins."""

from kdcore.hookspecs import hookimpl
from kdcore.tasks import Task, TaskData

__all__ = ["Task", "TaskData", "hookimpl"]
