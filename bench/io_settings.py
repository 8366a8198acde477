"""mqsite's settings plus the benchmark's I/O-bound tasks (bench/io.py)."""

from mqsite.settings import *  # noqa: F403

MQ_TASK_MODULES = ["bench.io_tasks"]
