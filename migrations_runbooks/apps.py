from django.apps import AppConfig


class MigrationsRunbooksConfig(AppConfig):
    name = "migrations_runbooks"
    verbose_name = "Migration runbooks"

    def ready(self) -> None:
        # The core layer cannot import runbooks: it calls the guards registered here (issue 17).
        from controlplane.core.services import allocation_guard_register
        from migrations_runbooks.allocation_guard import runbook_allocation_guard

        allocation_guard_register(runbook_allocation_guard)
