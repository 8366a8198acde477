"""Partial indexes for the admin's "delayed until" and "priority" filters
(see TaskRecord.Meta). Built CONCURRENTLY on PostgreSQL, where the history
may hold millions of rows that live workers keep writing; a plain index
elsewhere."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class AddIndexLive(AddIndexConcurrently):
    """CREATE INDEX CONCURRENTLY on PostgreSQL, a plain AddIndex elsewhere
    (SQLite has no CONCURRENTLY)."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)
        else:
            migrations.AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
        else:
            migrations.AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("tasks", "0010_task_error_trigram"),
    ]

    operations = [
        AddIndexLive(
            model_name="taskrecord",
            index=models.Index(
                condition=models.Q(("run_after__isnull", False), ("status", "READY")), fields=["run_after"], name="task_delayed"
            ),
        ),
        AddIndexLive(
            model_name="taskrecord",
            index=models.Index(condition=models.Q(("priority", 0), _negated=True), fields=["priority", "enqueued_at"], name="task_prioritised"),
        ),
    ]
