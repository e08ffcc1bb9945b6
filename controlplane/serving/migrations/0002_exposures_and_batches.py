"""Serving owns exposures and ingest batches (state-only move from ``experiments``; tables stay put).

The rows a rank request or a serving fleet's batch writes are serving's logs; the analysis reads them
through serving's selectors. The tables keep their names (``experiments_exposure``,
``experiments_ingestbatch``), so no data moves: only Django's model state changes, and the content
types follow the models so permissions granted on them survive.
"""

import django.db.models.deletion
from django.db import migrations, models


def move_content_types(apps, schema_editor, source="experiments", target="serving"):
    ContentType = apps.get_model("contenttypes", "ContentType")
    for model in ("exposure", "ingestbatch"):
        if not ContentType.objects.filter(app_label=target, model=model).exists():
            ContentType.objects.filter(app_label=source, model=model).update(app_label=target)


def move_content_types_back(apps, schema_editor):
    move_content_types(apps, schema_editor, source="serving", target="experiments")


class Migration(migrations.Migration):

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("controlplane", "0001_initial"),
        ("serving", "0001_serving_logs"),
        ("experiments", "0005_analysis_rollups"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='IngestBatch',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('client_batch_id', models.CharField(max_length=128)),
                        ('kind', models.CharField(choices=[('metric_rows', 'Metric rows'), ('events', 'Engagement events'), ('exposures', 'Exposures'), ('latency', 'Latency samples')], max_length=16)),
                        ('status', models.CharField(choices=[('accepted', 'Accepted'), ('partial', 'Partially accepted'), ('rejected', 'Rejected')], max_length=10)),
                        ('received', models.PositiveIntegerField()),
                        ('accepted', models.PositiveIntegerField()),
                        ('rejected', models.PositiveIntegerField()),
                        ('errors', models.JSONField(blank=True, default=list, help_text='[{row, field, message}] for rejected rows')),
                        ('created_by', models.CharField(blank=True, max_length=150)),
                        ('created_at', models.DateTimeField()),
                    ],
                    options={
                        'db_table': 'experiments_ingestbatch',
                        'constraints': [models.UniqueConstraint(fields=('kind', 'client_batch_id'), name='ingest_batch_once')],
                    },
                ),
                migrations.AlterField(
                    model_name='latencysample',
                    name='batch',
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='serving.ingestbatch'),
                ),
                migrations.CreateModel(
                    name='Exposure',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('salt', models.CharField(help_text="Allocation salt: identifies the experiment's assignment", max_length=64)),
                        ('unit_id', models.CharField(max_length=128)),
                        ('arm', models.CharField(max_length=10)),
                        ('population', models.CharField(max_length=20)),
                        ('stack', models.CharField(help_text='Stack label that served the first request', max_length=100)),
                        ('allocation_version', models.PositiveIntegerField()),
                        ('bucket', models.PositiveSmallIntegerField(blank=True, null=True)),
                        ('first_exposed_at', models.DateTimeField()),
                        ('surface', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='exposures', to='controlplane.surface')),
                    ],
                    options={
                        'db_table': 'experiments_exposure',
                        'indexes': [models.Index(fields=['surface', 'salt', 'arm'], name='exposure_arm_idx')],
                        'constraints': [models.UniqueConstraint(fields=('surface', 'salt', 'unit_id'), name='exposure_unit_once')],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(move_content_types, move_content_types_back, elidable=True),
    ]
