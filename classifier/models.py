"""Specimens, cell classifications and their review audit trail."""

import uuid
from pathlib import PurePosixPath

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Upper

from classifier.cells import classes

# Every class a cell can be given (the model's and the reviewer-only ones), read from the table.
CellClass = models.TextChoices("CellClass", [(c.code, (c.code, c.name)) for c in classes.TABLE])
LABEL_LENGTH = classes.MAX_CODE_LENGTH


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
    # What the report prints of the sign-off, as it was when signed (a later rename or role change
    # does not rewrite a signed report).
    signed_by_name = models.CharField(max_length=200, blank=True)
    signed_by_role = models.CharField(max_length=100, blank=True)
    review_comment = models.TextField(
        blank=True, max_length=2000, help_text="The reviewer's comment, printed on the report."
    )
    # An amendment opened to add images (specimens/amend.amendment_open): the specimen is reopened
    # (signed_at cleared, the released versions kept) until the re-sign releases the corrected version.
    amendment_reason = models.TextField(
        blank=True, max_length=2000, help_text="Why the open amendment was opened (sent with its version)."
    )
    amendment_opened_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
        related_name="opened_amendments",
    )
    amendment_opened_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # ACC-7 and acc-7 are one specimen: lookups are case-insensitive (services, selectors).
            models.UniqueConstraint(Upper("accession"), name="unique_accession_case_insensitive")
        ]

    def __str__(self):
        return self.accession

    @property
    def is_signed(self) -> bool:
        return self.signed_at is not None

    @property
    def amendment_is_open(self) -> bool:
        return self.amendment_opened_at is not None


class Classification(models.Model):
    """One white-cell image, the model's pre-classification and its human review."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="classifications"
    )
    specimen = models.ForeignKey(
        Specimen, on_delete=models.PROTECT, null=True, blank=True, related_name="cells"
    )
    # NULL (not ""), so that the per-owner unique constraint ignores results without an id.
    external_id = models.CharField(  # noqa: DJ001
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
    predicted_label = models.CharField(max_length=LABEL_LENGTH, choices=CellClass.choices, blank=True)
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
    final_label = models.CharField(max_length=LABEL_LENGTH, choices=CellClass.choices, blank=True)
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
        """The label that counts: the reviewer's if reviewed, else the model's when it classified the
        cell. An unidentified cell has none until a reviewer gives it one (``predicted_label`` still
        holds the model's top class, which was not trusted)."""
        if self.final_label:
            return self.final_label
        return self.predicted_label if self.status == Status.CLASSIFIED else ""

    @property
    def is_signed(self) -> bool:
        return self.review_state == ReviewState.SIGNED

    @property
    def review_version(self) -> str:
        """Changes with every review or sign-off: a form sends back the one its reviewer saw."""
        return f"{self.review_state}@{self.reviewed_at.isoformat() if self.reviewed_at else ''}"

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
    from_label = models.CharField(max_length=LABEL_LENGTH, blank=True)
    to_label = models.CharField(max_length=LABEL_LENGTH, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self):
        return f"{self.actor} {self.action} #{self.classification_id}"


def batch_source_path(instance, filename):
    return _private_name("batches", filename)


class BatchJob(models.Model):
    """Many images (files or a ZIP) for one specimen, classified in the background."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        DONE_WITH_ERRORS = "done_with_errors", "Done, some files failed"

    class Kind(models.TextChoices):
        CELLS = "cells", "One white cell per image"
        FIELDS = "fields", "Whole fields of view (cells located automatically)"

    specimen = models.ForeignKey(Specimen, on_delete=models.PROTECT, related_name="batch_jobs")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="batch_jobs"
    )
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.CELLS)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    runs = models.PositiveIntegerField(default=0, help_text="How many times a runner picked the job up.")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"job {self.pk} ({self.specimen_id}, {self.state})"

    @property
    def is_finished(self) -> bool:
        return self.state in (self.State.DONE, self.State.DONE_WITH_ERRORS)


class BatchItem(models.Model):
    """One file of a batch job and what became of it."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"

    job = models.ForeignKey(BatchJob, on_delete=models.CASCADE, related_name="items")
    position = models.PositiveIntegerField()
    filename = models.CharField(max_length=255)
    source = models.FileField(upload_to=batch_source_path, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    error_code = models.CharField(max_length=32, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    classification = models.ForeignKey(
        Classification, on_delete=models.SET_NULL, null=True, blank=True, related_name="batch_items"
    )
    cells = models.JSONField(
        default=list, blank=True,
        help_text="Whole fields: [{n, box: [x0, y0, x1, y1], classification_id}] for each located cell.",
    )
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "position"]
        constraints = [
            models.UniqueConstraint(fields=["job", "position"], name="unique_batch_item_position")
        ]

    def __str__(self):
        return f"{self.filename} ({self.state})"


# ---- LIS interface (issue 19): orders in, released report versions, the outbound HL7 message log ----


class Sex(models.TextChoices):
    """Administrative sex, HL7 v2 table 0001 (FHIR ``AdministrativeGender`` in the bundle)."""

    FEMALE = "F", "Female"
    MALE = "M", "Male"
    OTHER = "O", "Other"
    UNKNOWN = "U", "Unknown"


class Order(models.Model):
    """The LIS order for one specimen: who the patient is, who asked, when it was collected.

    It binds the accession: results of the specimen carry this identity in every format (HL7 PID,
    ORC, OBR-2; FHIR Patient, ServiceRequest). A specimen without an order is reported without a
    patient; none is invented.
    """

    class Source(models.TextChoices):
        API = "api", "REST API"
        HL7 = "hl7", "HL7 v2 over MLLP"

    specimen = models.OneToOneField(Specimen, on_delete=models.PROTECT, related_name="order")
    placer_order_number = models.CharField(max_length=64)
    placer_namespace = models.CharField(
        max_length=64, blank=True, help_text="The placer application (EI.2), e.g. the LIS's name."
    )
    patient_id = models.CharField(max_length=64, help_text="Medical record number (PID-3.1).")
    patient_id_authority = models.CharField(
        max_length=64, help_text="Who assigned the MRN (PID-3.4, HD namespace id)."
    )
    patient_family_name = models.CharField(max_length=100, blank=True)
    patient_given_name = models.CharField(max_length=100, blank=True)
    patient_birth_date = models.DateField(null=True, blank=True)
    patient_sex = models.CharField(max_length=1, choices=Sex.choices, default=Sex.UNKNOWN)
    ordering_provider_id = models.CharField(max_length=64, blank=True)
    ordering_provider_family_name = models.CharField(max_length=100, blank=True)
    ordering_provider_given_name = models.CharField(max_length=100, blank=True)
    collected_at = models.DateTimeField(null=True, blank=True)
    wbc_count = models.FloatField(
        null=True, blank=True, help_text="White-cell count from the analyser, 10^9/L (optional)."
    )
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.API)
    message_control_id = models.CharField(
        max_length=64, blank=True, help_text="MSH-10 of the HL7 order message that created it."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["placer_namespace", "placer_order_number"], name="unique_placer_order_number"
            )
        ]

    def __str__(self):
        return f"order {self.placer_order_number} ({self.specimen_id})"


class ReportVersion(models.Model):
    """One released version of a specimen's report: the sign-off (1), then each amendment.

    The HL7 message and the FHIR bundle are kept exactly as released, so an earlier version stays
    readable and every resend of a version is byte-identical (same MSH-10).
    """

    class Kind(models.TextChoices):
        FINAL = "final", "Final"
        CORRECTED = "corrected", "Corrected (amended)"

    specimen = models.ForeignKey(Specimen, on_delete=models.PROTECT, related_name="report_versions")
    number = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.FINAL)
    reason = models.TextField(blank=True, max_length=2000, help_text="Why it was amended.")
    released_at = models.DateTimeField()
    released_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="released_reports"
    )
    released_by_name = models.CharField(max_length=200)
    hl7 = models.TextField(blank=True, help_text="The ORU^R01 as released (ER7).")
    fhir = models.JSONField(default=dict, blank=True, help_text="The FHIR transaction bundle as released.")

    class Meta:
        ordering = ["specimen", "number"]
        constraints = [
            models.UniqueConstraint(fields=["specimen", "number"], name="unique_report_version")
        ]

    def __str__(self):
        return f"{self.specimen_id} v{self.number} ({self.kind})"

    @property
    def control_id(self) -> str:
        """MSH-10 of this version's ORU: stable, so the LIS can drop a duplicate delivery."""
        return f"HV{self.pk:010d}"


class OutboundMessage(models.Model):
    """One HL7 message to one LIS destination, and what became of its delivery (the message log)."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RETRY = "retry", "Waiting to retry (no ACK, or a negative one)"
        ACCEPTED = "accepted", "Accepted (ACK AA/CA)"

    report = models.ForeignKey(ReportVersion, on_delete=models.PROTECT, related_name="messages")
    destination = models.CharField(max_length=255, help_text="host:port of the LIS's MLLP listener.")
    control_id = models.CharField(max_length=20)
    payload = models.TextField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    ack_code = models.CharField(max_length=2, blank=True)
    ack_text = models.CharField(max_length=500, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    history = models.JSONField(default=list, blank=True, help_text="Every attempt: time and outcome.")
    created_at = models.DateTimeField(auto_now_add=True)
    next_attempt_at = models.DateTimeField(db_index=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    accepted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["report", "destination"], name="unique_message_per_destination")
        ]

    def __str__(self):
        return f"{self.control_id} -> {self.destination} ({self.state})"
