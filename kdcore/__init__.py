"""kdcore: knowledge distillation for PyTorch with a small core and domain plugins.

Importing kdcore (and registering a plugin's tasks) does not import torch: the engine, losses and
schedules are imported when a run needs them.
"""

from kdcore.hookspecs import hookimpl
from kdcore.lazy import lazy
from kdcore.tasks import Task, TaskData, data_home

__all__ = ["Task", "TaskData", "data_home", "hookimpl", "lazy"]
