"""RunStep.run and RunEvent.run lose the index of their own: the (run, node_id) and (run, seq)
constraints' indexes lead with the run and serve every lookup by it, and the extra index cost
a write on every step update and every event.

Only the indexes are dropped, by the names Django gave them (made from table and column: the
same in every database). AlterField would also drop and re-add the foreign keys, and adding
one back checks every row of the table while writes to it and to runs_run wait: minutes on a
large deployment."""

import django.db.models.deletion
from django.db import migrations, models

INDEXES = [
    ("runs_runstep", "runs_runstep_run_id_b15bfaff"),
    ("runs_runevent", "runs_runevent_run_id_8bd13aa7"),
]


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0008_run_parent_step"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="runevent",
                    name="run",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="events",
                        to="runs.run",
                    ),
                ),
                migrations.AlterField(
                    model_name="runstep",
                    name="run",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="steps",
                        to="runs.run",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    f'DROP INDEX IF EXISTS "{index}"',
                    reverse_sql=f'CREATE INDEX IF NOT EXISTS "{index}" ON "{table}" ("run_id")',
                )
                for table, index in INDEXES
            ],
        ),
    ]
