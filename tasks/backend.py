"""Kept so that ``TASKS = {"default": {"BACKEND": "tasks.backend.RedisTaskBackend"}}``,
the path the README documented first, goes on working."""

from tasks.queue.backend import RedisTaskBackend

__all__ = ["RedisTaskBackend"]
