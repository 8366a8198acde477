"""What the long-running commands share: log level from --verbosity, and the
stop signals (the first asks for a graceful stop, a second one forces)."""

import logging
import signal
import sys

LEVELS = {0: logging.WARNING, 1: logging.INFO}


def set_verbosity(verbosity):
    logging.getLogger("tasks").setLevel(LEVELS.get(verbosity, logging.DEBUG))


def install_stop_handlers(request_stop):
    """SIGTERM/SIGINT: the first calls request_stop (which only sets a flag),
    the second exits at once; in-flight work then returns through recovery."""
    received = []

    def handle(signum, frame):
        received.append(signum)
        if len(received) > 1:
            sys.exit(128 + signum)
        request_stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
