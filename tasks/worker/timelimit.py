"""A wall-clock limit for one task run.

In the main thread (``--concurrency 1``) SIGALRM enforces it: it interrupts
Python code and most blocking calls. Signals reach the main thread only, so a
task in a worker thread (``--concurrency N``) is interrupted by an exception
raised into its thread (``interrupt_thread``), which the interpreter delivers
at the thread's next Python instruction: a thread inside one C call or a
blocking system call (time.sleep, a socket read without a timeout) is
interrupted only once that call returns. Code stuck inside a C extension is
not interrupted at all: there the systemd watchdog is the backstop (the
worker stops vouching for a task past its limit).
"""

import signal
import threading
from contextlib import contextmanager, nullcontext
from functools import cache


class TaskTimeLimitExceeded(BaseException):
    """Raised into a task that overran its time limit.

    A BaseException, like KeyboardInterrupt: a task's own ``except Exception``
    (a retry loop, careless error handling) must not swallow it and hang on.
    """

    def __init__(self, *args):
        # Raised into a thread by class (interrupt_thread), hence no arguments.
        super().__init__(*(args or ("task exceeded its time limit",)))


def _expire(signum, frame):
    raise TaskTimeLimitExceeded("task exceeded its time limit")


def install_time_limit_handler():
    """SIGALRM interrupts Python code and most blocking calls. Signals need the
    main thread, so elsewhere (a Worker driven in a thread) no limit applies."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGALRM, _expire)
        _installed.append(True)


# A flag rather than signal.getsignal() per task: that converts to an enum,
# a measurable share of a no-op task.
_installed: list[bool] = []


# What a task without a limit runs in: a generator-based context manager per
# task is a visible share of a no-op task's cost.
_NO_LIMIT = nullcontext()


def time_limit(seconds):
    """A context manager interrupting the task with TaskTimeLimitExceeded after ``seconds``."""
    if not seconds or not _installed or threading.current_thread() is not threading.main_thread():
        return _NO_LIMIT
    return _limited(seconds)


@contextmanager
def _limited(seconds):
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


@cache
def _async_exc():
    """The C API's PyThreadState_SetAsyncExc, and ctypes' py_object (whose
    empty instance is the NULL that withdraws a pending exception)."""
    import ctypes  # lazy: 0.2 MiB of every worker, needed only once a thread overruns its limit

    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)
    return set_async_exc, ctypes.py_object


def interrupt_thread(ident):
    """Raise TaskTimeLimitExceeded in thread ``ident`` at its next Python
    instruction; True if that thread exists."""
    set_async_exc, _ = _async_exc()
    return set_async_exc(ident, TaskTimeLimitExceeded) == 1


def withdraw_interrupt(ident):
    """Drop an interrupt_thread() not delivered yet (the task ended first)."""
    set_async_exc, py_object = _async_exc()
    set_async_exc(ident, py_object())
