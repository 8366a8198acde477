from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tasks", "0004_schedule_state"),
    ]

    operations = [
        migrations.AddField(
            model_name="taskrecord",
            name="priority",
            field=models.SmallIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="taskrecord",
            name="run_after",
            field=models.DateTimeField(blank=True, null=True, verbose_name="delayed until"),
        ),
    ]
