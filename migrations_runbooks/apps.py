from django.apps import AppConfig


class MigrationsRunbooksConfig(AppConfig):
    name = "migrations_runbooks"
    verbose_name = "Migration runbooks"
