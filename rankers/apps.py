from django.apps import AppConfig


class RankersConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "rankers"
    verbose_name = "Ranking stacks (trained artifacts)"
