"""The key that makes a unique task unique.

A task is unique by its arguments (``"unique": True`` in MQ_TASK_OPTIONS) or
by a key its caller chooses; either way the key is scoped to the task's path
and hashed to a fixed width, so any key fits the column and its index. The
database enforces it (tasks.models.TaskRecord's "task_unique_while_open").
"""

import hashlib
import json


def unique_key(task_path, args, kwargs, key=None):
    """SHA-256 of the task path and either ``key`` or the canonical JSON of
    the arguments (keys sorted, no spaces: equal calls, equal keys)."""
    what = ["key", key] if key is not None else ["args", args, kwargs]
    canonical = json.dumps([task_path, *what], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
