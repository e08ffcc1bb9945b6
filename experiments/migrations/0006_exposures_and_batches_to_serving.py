"""Exposures and ingest batches move to ``serving`` (state only; see serving 0002). Tables stay put."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("experiments", "0005_analysis_rollups"),
        ("serving", "0002_exposures_and_batches"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="metricobservation",
                    name="batch",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="serving.ingestbatch",
                    ),
                ),
                migrations.DeleteModel(name="Exposure"),
                migrations.DeleteModel(name="IngestBatch"),
            ],
            database_operations=[],
        ),
    ]
