"""kdcore: knowledge distillation for PyTorch with a small core and domain plugins."""

from kdcore.hookspecs import hookimpl
from kdcore.tasks import Task, TaskData, data_home

__all__ = ["Task", "TaskData", "data_home", "hookimpl"]
