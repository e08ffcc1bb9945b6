from django.contrib import admin

from rankers.models import TrainedArtifact


@admin.register(TrainedArtifact)
class TrainedArtifactAdmin(admin.ModelAdmin):
    """Read-only: artifacts are registered through rankers.services.artifact_register."""

    list_display = ("kind", "stack", "world", "short_sha", "engine_stack_key", "created_at")
    list_filter = ("kind", "world")
    search_fields = ("sha256", "engine_stack_key", "stack__key", "stack__version")
    readonly_fields = [f.name for f in TrainedArtifact._meta.fields]

    @admin.display(description="sha256")
    def short_sha(self, obj: TrainedArtifact) -> str:
        return obj.sha256[:12]

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False
