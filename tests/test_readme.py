"""The README's first example, run as pasted on the pinned Django."""

import re
import sys
from pathlib import Path

import django
import pytest

from tasks.models import TaskRecord, TaskStatus
from tasks.worker.loop import Worker

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.django_db(transaction=True)
def test_the_first_example_defines_tasks_that_run(tmp_path, monkeypatch):
    first = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert first.startswith("# myapp/tasks.py\n")
    if django.VERSION >= (6,):  # the README's other import line, the one for Django 6
        first = first.replace("from django_tasks import", "# from django_tasks import")
        first = first.replace("# from django.tasks import", "from django.tasks import")
    package = tmp_path / "readme_app"
    package.mkdir()
    (package / "__init__.py").touch()
    (package / "tasks.py").write_text(first.replace("...\n", "pass\n"))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        from readme_app.tasks import rebuild_report, send_welcome

        welcome = send_welcome.enqueue(7)
        report = rebuild_report.enqueue(3)
        assert report.task.queue_name == "slow"
        Worker(burst=True, worker_id="readme").run()
        Worker(queue_names=["slow"], burst=True, worker_id="readme-slow").run()
    finally:
        for name in ("readme_app", "readme_app.tasks"):
            sys.modules.pop(name, None)
    assert TaskRecord.objects.get(id=welcome.id).status == TaskStatus.SUCCESSFUL
    assert TaskRecord.objects.get(id=welcome.id).result == {"sent": True}
    assert TaskRecord.objects.get(id=report.id).status == TaskStatus.SUCCESSFUL


def readme_block(marker):
    """The README's ```python block that contains ``marker``, for the pinned Django."""
    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if marker in b)
    if django.VERSION >= (6,):
        block = block.replace(
            "from django_tasks import task          # Django 6+: from django.tasks import task",
            "from django.tasks import task",
        )
    return block


@pytest.mark.django_db(transaction=True)
def test_the_cancel_and_progress_example_runs_as_pasted(redis_url, tmp_path, monkeypatch):
    from tasks.queue.backend import cancel
    from tests.processes import manage, stop, wait_for

    package = tmp_path / "readme_cancel"
    package.mkdir()
    (package / "__init__.py").touch()
    (package / "tasks.py").write_text(readme_block("def count_slowly"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    modules = ["tests.fixture_tasks", "tests.faults.fault_tasks", "readme_cancel.tasks"]
    try:
        from readme_cancel.tasks import count_slowly

        finished = count_slowly.enqueue(3)
        endless = count_slowly.enqueue(600)  # a minute, unless it hears the cancel
        worker = manage(redis_url, "listen_queue", settings={"MQ_TASK_MODULES": modules})
        try:
            def row(result):
                return TaskRecord.objects.get(id=result.id)

            wait_for(lambda: (row(endless).progress or {}).get("done", 0) >= 2, message="the long run to report progress")
            assert cancel(endless.id) == TaskStatus.RUNNING
            wait_for(lambda: row(endless).status == TaskStatus.CANCELLED, timeout=10, message="the cancel to be heard")
        finally:
            stop(worker)
    finally:
        for name in ("readme_cancel", "readme_cancel.tasks"):
            sys.modules.pop(name, None)
    done = TaskRecord.objects.get(id=finished.id)
    assert done.status == TaskStatus.SUCCESSFUL and done.result == 3
    assert done.progress == {"done": 3, "total": 3, "text": "step 3 of 3"}
    assert TaskRecord.objects.get(id=endless.id).result.startswith("stopped before step ")
