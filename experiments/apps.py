from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    name = "experiments"
    verbose_name = "Experiments"

    def ready(self) -> None:
        from django.db.models.signals import post_delete

        from experiments.models import AnalysisRollup
        from experiments.rollups import rollup_deleted

        # A deleted rollup (or experiment) takes its table with it.
        post_delete.connect(rollup_deleted, sender=AnalysisRollup, dispatch_uid="experiments-rollup-table")
