"""Task registry: how targets come from manifest columns, the heads, the loss, decoding and metrics.

>>> task = create_task("opacity", sides=["right", "left"], loss="corn")
>>> tasks = TaskSet.from_config([{"kind": "diagnosis", "classes": ["normal", "viral", "covid19"]}])
"""

from cxrlab.tasks.base import TASKS, Task, create_task, list_tasks, register_task
from cxrlab.tasks.classification import BinaryTask, DiagnosisTask
from cxrlab.tasks.multi import TaskSet
from cxrlab.tasks.ordinal import OpacityTask, OrdinalTask, ZonesTask, macro_mae
from cxrlab.tasks.regression import SeverityTask

__all__ = [
    "TASKS", "BinaryTask", "DiagnosisTask", "OpacityTask", "OrdinalTask", "SeverityTask", "Task", "TaskSet",
    "ZonesTask", "create_task", "list_tasks", "macro_mae", "register_task",
]
