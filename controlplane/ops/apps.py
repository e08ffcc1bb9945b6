from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "controlplane.ops"
    label = "ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        from controlplane.ops import logs

        logs.configure_structlog()
        # Celery signals count and time tasks in whichever process runs or sends them (web, worker).
        from controlplane.ops import celery_signals

        celery_signals.connect()
