from django.apps import AppConfig


class ClassifierConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "classifier"
    verbose_name = "White-cell classification"

    def ready(self):
        from django.db.models.signals import post_save

        from classifier import inference  # noqa: F401  (connects setting_changed; loads no model)
        from classifier.interop import codes  # noqa: F401  (registers the local-codes system check)
        from classifier.models import Specimen
        from classifier.specimens import amend

        # A signed specimen releases report version 1 (HL7/FHIR kept, queued to the LIS): issue 19.
        post_save.connect(amend.release_on_sign, sender=Specimen, dispatch_uid="release_on_sign")
