"""mypy (with django-stubs, mypy.ini) is clean on tasks/: run in `make test`
so CI checks the annotations on both Django versions."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.no_redis
@pytest.mark.slow
def test_mypy_is_clean_on_tasks():
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--cache-dir=/dev/null"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )

    assert done.returncode == 0, done.stdout + done.stderr
