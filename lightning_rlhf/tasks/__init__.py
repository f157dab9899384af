"""The bundled synthetic task suite: problems, oracle, and the JSONL files every stage trains on."""

from lightning_rlhf.tasks.suite import (
    MIXTURE,
    TASKS,
    Problem,
    corrupt,
    sample_problems,
    score,
    solve,
)
from lightning_rlhf.tasks.write import write_task_data

__all__ = [
    "MIXTURE",
    "TASKS",
    "Problem",
    "corrupt",
    "sample_problems",
    "score",
    "solve",
    "write_task_data",
]
