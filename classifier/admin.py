"""Admin: results and specimens with thumbnails (through the private image view), filters,
search and bulk review actions that go through the services; the audit trail is read-only."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse
from django.utils.html import format_html

from classifier.cells import review as cell_review
from classifier.interop import outbox
from classifier.models import Classification, Order, OutboundMessage, ReportVersion, ReviewEvent, Specimen
from classifier.specimens import signoff


def _thumbnail(cell: Classification, size: int = 64):
    if not cell.pk or not cell.image:
        return "—"
    return format_html(
        '<img src="{}" alt="cell #{}" style="width:{}px;height:{}px;object-fit:cover;border-radius:4px">',
        reverse("classification-image", args=[cell.pk]), cell.pk, size, size * 3 // 4,
    )


def _run_bulk(modeladmin, request, objects, action, verb: str) -> None:
    """Apply ``action`` to each object; report how many succeeded and why others did not."""
    done, refused = 0, []
    for obj in objects:
        try:
            action(obj)
        except (ValidationError, PermissionDenied) as exc:
            text = " ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
            refused.append(f"{obj}: {text}")
        else:
            done += 1
    if done:
        modeladmin.message_user(request, f"{done} {verb}.", messages.SUCCESS)
    for line in refused[:20]:
        modeladmin.message_user(request, line, messages.WARNING)


class _ReadOnlyInline(admin.TabularInline):
    """Rows shown under their parent, never added, changed or deleted there."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class ReviewEventInline(_ReadOnlyInline):
    model = ReviewEvent
    fields = readonly_fields = ("created_at", "actor", "action", "from_label", "to_label")


@admin.register(Classification)
class ClassificationAdmin(admin.ModelAdmin):
    list_display = (
        "thumbnail", "id", "owner", "specimen", "predicted_label", "confidence_percent", "status",
        "final_label", "review_state", "model_version", "created_at",
    )
    list_display_links = ("thumbnail", "id")
    list_filter = ("predicted_label", "final_label", "status", "review_state", "model_version", "created_at")
    search_fields = ("original_filename", "specimen__accession", "external_id", "owner__username")
    date_hierarchy = "created_at"
    list_select_related = ("owner", "specimen")
    actions = ("confirm_selected",)  # cells are signed with their specimen, never one by one
    inlines = (ReviewEventInline,)
    readonly_fields = (
        "preview", "owner", "specimen", "external_id", "original_filename", "image_sha256", "width",
        "height", "created_at", "status", "predicted_label", "confidence", "probabilities", "flag_reason",
        "flag_message", "cell_box", "model_version", "review_state", "final_label", "reviewed_by",
        "reviewed_at", "signed_by", "signed_at",
    )
    exclude = ("image", "heatmap")

    @admin.display(description="Image")
    def thumbnail(self, obj):
        return _thumbnail(obj)

    @admin.display(description="Image")
    def preview(self, obj):
        return _thumbnail(obj, size=240)

    @admin.display(description="Confidence", ordering="confidence")
    def confidence_percent(self, obj):
        return "—" if obj.confidence is None else f"{obj.confidence:.0%}"

    def has_add_permission(self, request):
        return False  # images come in through the portal or the API, which check them

    def has_delete_permission(self, request, obj=None):
        return False  # results are records: only their submitter deletes one, unreviewed, in the portal

    @admin.action(description="Confirm the model's class for the selected results")
    def confirm_selected(self, request, queryset):
        _run_bulk(
            self, request, queryset,
            lambda cell: cell_review.classification_confirm(classification=cell, reviewer=request.user),
            "result(s) confirmed",
        )


class CellInline(_ReadOnlyInline):
    model = Classification
    show_change_link = True
    fields = readonly_fields = ("thumbnail", "predicted_label", "confidence", "status", "final_label",
                                "review_state")

    @admin.display(description="Image")
    def thumbnail(self, obj):
        return _thumbnail(obj, size=48)


@admin.register(Specimen)
class SpecimenAdmin(admin.ModelAdmin):
    list_display = ("accession", "created_by", "created_at", "cell_count", "signed_by", "signed_at")
    list_filter = ("created_at", "signed_at")
    search_fields = ("accession", "created_by__username")
    readonly_fields = ("accession", "created_by", "created_at", "signed_by", "signed_at")
    inlines = (CellInline,)
    actions = ("sign_selected",)

    @admin.display(description="Cells")
    def cell_count(self, obj):
        return obj.cells.count()

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Sign the selected specimens (every cell must be reviewed)")
    def sign_selected(self, request, queryset):
        _run_bulk(
            self, request, queryset,
            lambda specimen: signoff.specimen_sign(specimen=specimen, reviewer=request.user),
            "specimen(s) signed",
        )


class _ReadOnly(admin.ModelAdmin):
    """Records of what was reviewed, received, released or sent: readable, never edited by hand."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ReviewEvent)
class ReviewEventAdmin(_ReadOnly):
    """The audit trail: readable, never editable."""

    list_display = ("created_at", "classification", "actor", "action", "from_label", "to_label")
    list_filter = ("action", "created_at")
    search_fields = ("actor__username", "classification__id", "classification__specimen__accession")
    list_select_related = ("actor", "classification")


# ---- LIS interface (issue 19): orders, released report versions, the HL7 message log ----


@admin.register(Order)
class OrderAdmin(_ReadOnly):
    list_display = (
        "placer_order_number", "specimen", "patient_id", "patient_id_authority", "source", "created_at"
    )
    list_filter = ("source", "created_at")
    search_fields = ("placer_order_number", "specimen__accession", "patient_id", "patient_family_name")
    list_select_related = ("specimen",)


@admin.register(ReportVersion)
class ReportVersionAdmin(_ReadOnly):
    list_display = ("specimen", "number", "kind", "released_at", "released_by_name", "reason")
    list_filter = ("kind", "released_at")
    search_fields = ("specimen__accession", "reason")
    list_select_related = ("specimen",)


@admin.register(OutboundMessage)
class OutboundMessageAdmin(_ReadOnly):
    """The HL7 message log: control id, version, state, ACK, attempts and times of every result sent."""

    list_display = (
        "control_id", "report", "destination", "state", "ack_code", "attempts", "created_at",
        "last_attempt_at", "accepted_at", "next_attempt_at",
    )
    list_filter = ("state", "ack_code", "destination")
    search_fields = ("control_id", "report__specimen__accession")
    list_select_related = ("report__specimen",)
    readonly_fields = [f.name for f in OutboundMessage._meta.fields]
    actions = ["resend"]

    @admin.action(description="Send the selected messages again now")
    def resend(self, request, queryset):
        _run_bulk(
            self, request, queryset, lambda m: outbox.message_resend(message=m, user=request.user), "queued"
        )
