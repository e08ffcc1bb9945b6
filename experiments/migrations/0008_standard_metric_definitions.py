"""The standard metric definitions, created by ``migrate`` (issue 17: a production set-up accepts
metric rows with no demo step).

The rows are frozen here as they stood at this release (the union of
``experiments.services.metric_definitions_ensure_standard`` and the serving extras of
``experiments.ingestion.metric_definitions_ensure``); a migration must not import code that may
change later. Existing keys are left as they are (an operator may have edited them); the reverse
removes nothing (definitions may be in use by then).
"""

from django.db import migrations

STANDARD_DEFINITIONS = [
    {'key': 'comments', 'name': 'Comments per user', 'kind': 'mean', 'direction': 'higher', 'numerator': '', 'denominator': '', 'quantile': None, 'ingestible': True, 'description': 'Comments written'},
    {'key': 'engagement_rate', 'name': 'Engagement rate', 'kind': 'ratio', 'direction': 'higher', 'numerator': 'likes+comments+shares', 'denominator': 'impressions', 'quantile': None, 'ingestible': False, 'description': '(likes + comments + shares) / impressions, delta method over users'},
    {'key': 'engagements', 'name': 'Engagements', 'kind': 'mean', 'direction': 'higher', 'numerator': '', 'denominator': '', 'quantile': None, 'ingestible': True, 'description': 'Likes + comments + shares'},
    {'key': 'error_rate', 'name': 'Error rate', 'kind': 'ratio', 'direction': 'lower', 'numerator': 'errors', 'denominator': 'requests', 'quantile': None, 'ingestible': False, 'description': 'Failed feed loads / requests'},
    {'key': 'errors', 'name': 'Errors per user', 'kind': 'mean', 'direction': 'lower', 'numerator': '', 'denominator': '', 'quantile': None, 'ingestible': True, 'description': 'Failed feed loads'},
    {'key': 'hide_report_rate', 'name': 'Hide + report rate', 'kind': 'ratio', 'direction': 'lower', 'numerator': 'hides+reports', 'denominator': 'impressions', 'quantile': None, 'ingestible': False, 'description': '(hides + reports) / impressions'},
    {'key': 'hides', 'name': 'Hides per user', 'kind': 'mean', 'direction': 'lower', 'numerator': '', 'denominator': '', 'quantile': None, 'ingestible': True, 'description': 'Items hidden'},
    {'key': 'impressions', 'name': 'Impressions per user', 'kind': 'mean', 'direction': 'higher', 'numerator': '', 'denominator': '', 'quantile': None, 'ingestible': True, 'description': 'Feed items shown to the unit'},
    {'key': 'integrity_impressions', 'name': 'Integrity-violating impressions', 'kind': 'mean', 'direction': 'lower', 'numerator': '', 'denominator': '', 'quantile': None, 'ingestible': True, 'description': 'Impressions of violating items'},
    {'key': 'integrity_rate', 'name': 'Integrity-violating impression rate', 'kind': 'ratio', 'direction': 'lower', 'numerator': 'integrity_impressions', 'denominator': 'impressions', 'quantile': None, 'ingestible': False, 'description': 'Violating impressions / impressions'},
    {'key': 'latency_p50', 'name': 'p50 latency (ms)', 'kind': 'quantile', 'direction': 'lower', 'numerator': '', 'denominator': '', 'quantile': 0.5, 'ingestible': False, 'description': 'Median serving latency per arm'},
    {'key': 'latency_p99', 'name': 'p99 feed-load latency (ms)', 'kind': 'quantile', 'direction': 'lower', 'numerator': '', 'denominator': '', 'quantile': 0.99, 'ingestible': False, 'description': '99th percentile of per-request serving latency (samples logged by serving)'},
    {'key': 'likes', 'name': 'Likes per user', 'kind': 'mean', 'direction': 'higher', 'numerator': '', 'denominator': '', 'quantile': None, 'ingestible': True, 'description': 'Likes given'},
    {'key': 'meaningful_interactions', 'name': 'Meaningful interactions per user', 'kind': 'mean', 'direction': 'higher', 'numerator': '', 'denominator': '', 'quantile': None, 'ingestible': True, 'description': "Comments + shares (the program's north-star interaction count)"},
    {'key': 'negative_feedback', 'name': 'Negative feedback', 'kind': 'mean', 'direction': 'lower', 'numerator': '', 'denominator': '', 'quantile': None, 'ingestible': True, 'description': 'Hides + reports'},
    {'key': 'newcomer_exposure', 'name': 'Newcomer-creator exposure', 'kind': 'ratio', 'direction': 'higher', 'numerator': 'newcomer_impressions', 'denominator': 'impressions', 'quantile': None, 'ingestible': False, 'description': 'Share of impressions from new creators'},
    {'key': 'newcomer_impressions', 'name': 'Newcomer-creator impressions', 'kind': 'mean', 'direction': 'higher', 'numerator': '', 'denominator': '', 'quantile': None, 'ingestible': True, 'description': "Impressions of new creators' posts"},
    {'key': 'reports', 'name': 'Reports per user', 'kind': 'mean', 'direction': 'lower', 'numerator': '', 'denominator': '', 'quantile': None, 'ingestible': True, 'description': 'Items reported'},
    {'key': 'requests', 'name': 'Requests per user', 'kind': 'mean', 'direction': 'higher', 'numerator': '', 'denominator': '', 'quantile': None, 'ingestible': True, 'description': 'Feed load requests'},
    {'key': 'sessions', 'name': 'Sessions per user', 'kind': 'mean', 'direction': 'higher', 'numerator': '', 'denominator': '', 'quantile': None, 'ingestible': True, 'description': 'Feed sessions started'},
    {'key': 'shares', 'name': 'Shares per user', 'kind': 'mean', 'direction': 'higher', 'numerator': '', 'denominator': '', 'quantile': None, 'ingestible': True, 'description': 'Shares'},
    {'key': 'time_spent', 'name': 'Time spent per user (s)', 'kind': 'mean', 'direction': 'higher', 'numerator': '', 'denominator': '', 'quantile': None, 'ingestible': True, 'description': 'Dwell seconds on feed items'},
]


def create_standard_definitions(apps, schema_editor):
    MetricDefinition = apps.get_model("experiments", "MetricDefinition")
    existing = set(MetricDefinition.objects.values_list("key", flat=True))
    MetricDefinition.objects.bulk_create(
        [MetricDefinition(**row) for row in STANDARD_DEFINITIONS if row["key"] not in existing],
        ignore_conflicts=True,
    )


class Migration(migrations.Migration):
    dependencies = [("experiments", "0007_experimentmetric_capping")]

    operations = [migrations.RunPython(create_standard_definitions, migrations.RunPython.noop)]
