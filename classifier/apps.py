from django.apps import AppConfig


class ClassifierConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "classifier"
    verbose_name = "White-cell classification"

    def ready(self):
        from . import inference  # noqa: F401  (connects setting_changed; loads no model)
