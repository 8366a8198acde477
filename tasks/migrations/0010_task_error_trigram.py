"""A trigram index of the error messages, on PostgreSQL only, for the
admin's search (TaskRecordQuerySet.search): words of an error found among
millions of rows without reading them all.

Only rows with an error are indexed (the partial WHERE): a success, most of
the traffic, writes nothing to it. Built CONCURRENTLY, so a deployment that
migrates under live workers does not hold their writes for the build.
pg_trgm ships with PostgreSQL and is a trusted extension (13+): the owner of
the database may create it, no superuser needed. SQLite gets nothing; its
search reads the table, which at its sizes is fine.
"""

from django.db import migrations

INDEX = "task_error_trigram"


def create_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        schema_editor.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON tasks_taskrecord "
            "USING gin (UPPER(error) gin_trgm_ops) WHERE error <> ''"
        )


def drop_index(apps, schema_editor):
    # The extension stays: something else in the database may use it.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("tasks", "0009_task_unique"),
    ]

    operations = [
        migrations.RunPython(create_index, drop_index, elidable=False),
    ]
