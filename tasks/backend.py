"""Kept so that ``TASKS = {"default": {"BACKEND": "tasks.backend.RedisTaskBackend"}}``,
the path the README documented first, goes on working, with the exceptions
callers of that module caught."""

from tasks.exceptions import ArgumentsNotStorable, MessageTooLarge, QueueUnavailable
from tasks.queue.backend import RedisTaskBackend

__all__ = ["ArgumentsNotStorable", "MessageTooLarge", "QueueUnavailable", "RedisTaskBackend"]
