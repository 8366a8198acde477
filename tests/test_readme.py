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
