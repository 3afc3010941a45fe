"""Specimens, cell classifications and their review audit trail."""

import uuid
from pathlib import PurePosixPath

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models


class CellClass(models.TextChoices):
    """The four white-cell classes, in the model's output order."""

    EOSINOPHIL = "EOSINOPHIL", "Eosinophil"
    LYMPHOCYTE = "LYMPHOCYTE", "Lymphocyte"
    MONOCYTE = "MONOCYTE", "Monocyte"
    NEUTROPHIL = "NEUTROPHIL", "Neutrophil"


class Status(models.TextChoices):
    """What the model made of the image."""

    PENDING = "pending", "Pending (model unavailable)"
    CLASSIFIED = "classified", "Classified"
    UNIDENTIFIED = "unidentified", "Unidentified (needs review)"


class ReviewState(models.TextChoices):
    UNREVIEWED = "unreviewed", "Unreviewed"
    CONFIRMED = "confirmed", "Confirmed"
    RECLASSIFIED = "reclassified", "Reclassified"
    SIGNED = "signed", "Signed"


accession_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    "An accession number is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
)


def _private_name(prefix: str, filename: str) -> str:
    """A stored name that reveals nothing about the patient or the upload."""
    suffix = PurePosixPath(filename).suffix.lower()
    return f"{prefix}/{uuid.uuid4().hex}{suffix}"


def cell_image_path(instance, filename):
    return _private_name("cells", filename)


def heatmap_path(instance, filename):
    return _private_name("heatmaps", filename)


class Specimen(models.Model):
    """One patient sample (accession number): the unit the lab reports and signs."""

    accession = models.CharField(max_length=64, unique=True, validators=[accession_validator])
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="specimens"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    signed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="signed_specimens",
    )
    signed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return self.accession

    @property
    def is_signed(self) -> bool:
        return self.signed_at is not None


class Classification(models.Model):
    """One white-cell image, the model's pre-classification and its human review."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="classifications"
    )
    specimen = models.ForeignKey(
        Specimen, on_delete=models.PROTECT, null=True, blank=True, related_name="cells"
    )
    external_id = models.CharField(
        max_length=128, null=True, blank=True,
        help_text="Client-supplied id that makes retries safe (unique per user).",
    )
    image = models.FileField(upload_to=cell_image_path)
    original_filename = models.CharField(max_length=255, blank=True)
    image_sha256 = models.CharField(max_length=64)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    predicted_label = models.CharField(max_length=16, choices=CellClass.choices, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    probabilities = models.JSONField(default=dict, blank=True)
    flag_reason = models.CharField(max_length=32, blank=True)
    flag_message = models.CharField(max_length=255, blank=True)
    cell_box = models.JSONField(null=True, blank=True)
    model_version = models.CharField(max_length=64, blank=True)
    heatmap = models.FileField(upload_to=heatmap_path, blank=True)

    review_state = models.CharField(
        max_length=16, choices=ReviewState.choices, default=ReviewState.UNREVIEWED, db_index=True
    )
    final_label = models.CharField(max_length=16, choices=CellClass.choices, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
        related_name="reviewed_classifications",
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    signed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
        related_name="signed_classifications",
    )
    signed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "external_id"], name="unique_external_id_per_owner"
            )
        ]
        indexes = [models.Index(fields=["owner", "-created_at"])]

    def __str__(self):
        return f"#{self.pk} {self.label or self.status}"

    @property
    def label(self) -> str:
        """The label that counts: the reviewer's if reviewed, else the model's."""
        return self.final_label or self.predicted_label

    @property
    def is_signed(self) -> bool:
        return self.review_state == ReviewState.SIGNED

    @property
    def needs_review(self) -> bool:
        return self.review_state == ReviewState.UNREVIEWED

    def probabilities_sorted(self):
        return sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)


class ReviewEvent(models.Model):
    """Audit trail: who changed what, when, from which label to which."""

    class Action(models.TextChoices):
        CONFIRM = "confirm", "Confirmed"
        RECLASSIFY = "reclassify", "Reclassified"
        SIGN = "sign", "Signed"

    classification = models.ForeignKey(
        Classification, on_delete=models.CASCADE, related_name="events"
    )
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT)
    action = models.CharField(max_length=16, choices=Action.choices)
    from_label = models.CharField(max_length=16, blank=True)
    to_label = models.CharField(max_length=16, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self):
        return f"{self.actor} {self.action} #{self.classification_id}"
