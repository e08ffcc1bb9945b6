from django.apps import AppConfig


class ControlplaneConfig(AppConfig):
    name = "controlplane.core"
    label = "controlplane"  # the app's tables, migrations and content types keep their names
    verbose_name = "Control plane"

    def ready(self) -> None:
        # Bind shared_task/delay_on_commit to our configured Celery app in every Django process.
        from controlplane import celery  # noqa: F401
