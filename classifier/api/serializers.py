"""API representations. Serializers parse and render; services and selectors decide."""

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers
from rest_framework.authtoken.serializers import AuthTokenSerializer

from classifier.api.differential_serializers import DifferentialSerializer
from classifier.cells import classes, heatmaps
from classifier.cells.validation import check_size
from classifier.models import (
    BatchJob,
    CellClass,
    Classification,
    ReviewState,
    Specimen,
    Status,
    accession_validator,
)


class OptionalChoiceField(serializers.ChoiceField):
    """A choice rendered as null instead of the model's blank string ("no label yet")."""

    def __init__(self, **kwargs):
        kwargs.setdefault("allow_null", True)
        kwargs.setdefault("read_only", True)
        super().__init__(**kwargs)

    def to_representation(self, value):
        return None if value in ("", None) else super().to_representation(value)


ProbabilitiesSerializer = type(
    "ProbabilitiesSerializer",
    (serializers.Serializer,),
    {
        "__doc__": (
            "Softmax probability per class of the model that read the cell (the classes of its card: "
            "four for the first model, up to eight; empty while pending)."
        ),
        **{
            code: serializers.FloatField(required=False, min_value=0.0, max_value=1.0)
            for code in classes.MODEL_CODES
        },
    },
)


class ClassificationSerializer(serializers.ModelSerializer):
    """One cell image, the model's pre-classification and its human review."""

    label = OptionalChoiceField(
        choices=CellClass.choices,
        help_text=(
            "The label that counts: the reviewer's if reviewed, else the model's; null while pending and "
            "for an unidentified cell until a reviewer gives it a class."
        ),
    )
    predicted_label = OptionalChoiceField(
        choices=CellClass.choices,
        help_text=(
            "The model's top class; null while pending. For an unidentified cell it was not trusted "
            "and does not count (label is null)."
        ),
    )
    final_label = OptionalChoiceField(
        choices=CellClass.choices, help_text="The reviewer's label; null until reviewed."
    )
    confidence = serializers.FloatField(
        read_only=True, allow_null=True, min_value=0.0, max_value=1.0,
        help_text="Probability of the predicted label (0-1); null while pending.",
    )
    probabilities = ProbabilitiesSerializer(read_only=True)
    status = serializers.ChoiceField(
        choices=Status.choices, read_only=True,
        help_text="classified; unidentified (the model is unsure or the image is not a usable "
        "white-cell image: a reviewer must decide); pending (the model was unavailable).",
    )
    review_state = serializers.ChoiceField(choices=ReviewState.choices, read_only=True)
    flag_reason = serializers.CharField(
        read_only=True, help_text="Machine-readable reason for an unidentified result, else empty."
    )
    flag_message = serializers.CharField(read_only=True, help_text="Why the result was flagged, for people.")
    cell_box = serializers.ListField(
        child=serializers.IntegerField(), min_length=4, max_length=4, read_only=True, allow_null=True,
        help_text="Located cell [left, top, right, bottom] in image pixels, or null.",
    )
    model_version = serializers.CharField(
        read_only=True, help_text="Version (content hash) of the model that made the prediction."
    )
    accession = serializers.CharField(
        source="specimen.accession", read_only=True, allow_null=True, default=None,
        help_text="Accession number of the specimen the cell belongs to, or null.",
    )
    external_id = serializers.CharField(read_only=True, allow_null=True)
    reviewed_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    signed_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    image_url = serializers.SerializerMethodField(help_text="Authenticated download of the stored image.")
    heatmap_url = serializers.SerializerMethodField(
        help_text="Authenticated download of the Grad-CAM heat map (PNG, drawn on first request); null "
        "while pending or when the model that classified the cell is no longer served."
    )

    class Meta:
        model = Classification
        fields = [
            "id", "label", "predicted_label", "final_label", "confidence", "probabilities",
            "status", "review_state", "flag_reason", "flag_message", "cell_box", "model_version",
            "accession", "external_id", "original_filename", "width", "height", "created_at",
            "reviewed_by", "reviewed_at", "signed_by", "signed_at", "image_url", "heatmap_url",
        ]
        read_only_fields = fields

    def _url(self, name: str, pk: int) -> str:
        path = reverse(name, kwargs={"pk": pk})
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path

    @extend_schema_field(OpenApiTypes.URI)
    def get_image_url(self, obj) -> str:
        return self._url("api-classification-image", obj.pk)

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True})
    def get_heatmap_url(self, obj):
        drawable = heatmaps.heatmap_state(obj) in ("stored", "drawable")
        return self._url("api-classification-heatmap", obj.pk) if drawable else None


class ClassificationUploadSerializer(serializers.Serializer):
    """multipart/form-data body of POST /api/v1/classifications/."""

    image = serializers.FileField(
        allow_empty_file=True,  # the image checks answer an empty file with their own message
        help_text="One white-cell image: JPEG, PNG, TIFF, BMP or WebP, at most the configured size.",
    )
    accession = serializers.CharField(
        required=False, allow_blank=True, max_length=64, validators=[accession_validator],
        help_text="Accession number of the specimen (order); created on first use.",
    )
    external_id = serializers.CharField(
        required=False, allow_blank=True, max_length=128,
        help_text="Your id for this upload; posting it again returns the stored result (safe retries).",
    )

    def validate_accession(self, value):
        return value.strip()

    def validate_image(self, value):
        check_size(value.size)  # 413 before an oversize upload is read into memory
        return value


class ClassificationPendingSerializer(serializers.Serializer):
    """503 body: the image is stored but the model is unavailable; poll ``url`` later."""

    detail = serializers.CharField()
    code = serializers.CharField()
    id = serializers.IntegerField(help_text="Id of the stored, pending classification.")
    url = serializers.URLField(help_text="Where to fetch the result once classified.")


class SpecimenListSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    signed_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    signed = serializers.BooleanField(source="is_signed", read_only=True)
    url = serializers.SerializerMethodField()

    class Meta:
        model = Specimen
        fields = ["accession", "created_by", "created_at", "signed", "signed_by", "signed_at", "url"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, obj) -> str:
        path = reverse("api-specimen-detail", kwargs={"accession": obj.accession})
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


class AmendmentSerializer(serializers.Serializer):
    """An amendment opened to add images: the specimen is reopened until it is signed again."""

    accession = serializers.CharField()
    reason = serializers.CharField(source="amendment_reason")
    opened_by = serializers.CharField(source="amendment_opened_by.get_username", help_text="Username.")
    opened_at = serializers.DateTimeField(source="amendment_opened_at")


class SpecimenSerializer(SpecimenListSerializer):
    """A specimen with its cells, differential, review state and sign-off.

    Rendered from ``{"specimen": ..., "differential": ..., "cells": ...}``.
    """

    review_state = serializers.SerializerMethodField(
        help_text="signed; ready_to_sign (every cell reviewed); in_review (cells await review or the model)."
    )
    ready_to_sign = serializers.SerializerMethodField()
    differential = serializers.SerializerMethodField()
    cells = serializers.SerializerMethodField()
    amendment = serializers.SerializerMethodField(
        help_text="The amendment opened to add images (null when none is open): upload to the accession, "
        "review the new cells and sign to release the corrected version."
    )

    class Meta(SpecimenListSerializer.Meta):
        fields = [
            *SpecimenListSerializer.Meta.fields, "review_state", "ready_to_sign", "amendment", "differential",
            "cells",
        ]
        read_only_fields = fields

    def _differential(self):
        return self.context["differential"]

    @extend_schema_field(serializers.ChoiceField(choices=["in_review", "ready_to_sign", "signed"]))
    def get_review_state(self, obj) -> str:
        differential = self._differential()
        if differential.signed:
            return "signed"
        return "ready_to_sign" if differential.ready_to_sign else "in_review"

    def get_ready_to_sign(self, obj) -> bool:
        return self._differential().ready_to_sign

    @extend_schema_field(AmendmentSerializer(allow_null=True))
    def get_amendment(self, obj):
        return AmendmentSerializer(obj).data if obj.amendment_is_open else None

    @extend_schema_field(DifferentialSerializer)
    def get_differential(self, obj):
        return DifferentialSerializer(self._differential()).data

    @extend_schema_field(ClassificationSerializer(many=True))
    def get_cells(self, obj):
        return ClassificationSerializer(self.context["cells"], many=True, context=self.context).data


class ChangedSinceSerializer(serializers.Serializer):
    """Polling filters of the specimen list (issue 19)."""

    signed_after = serializers.DateTimeField(required=False)
    updated_after = serializers.DateTimeField(required=False)


class TokenRequestSerializer(AuthTokenSerializer):
    """DRF's token serializer with the user model's limits, so bad input is a 400 on every database.

    django-axes records failed usernames in a 255-character column: a longer one
    was a 500 on PostgreSQL (SQLite does not enforce lengths).
    """

    username = serializers.CharField(label="Username", max_length=150)
    password = serializers.CharField(
        label="Password", style={"input_type": "password"}, trim_whitespace=False, max_length=4096
    )


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Send as 'Authorization: Token <token>'.")


class ErrorSerializer(serializers.Serializer):
    """Every error: a message for people and a stable code for programs."""

    detail = serializers.CharField(help_text="What went wrong, for people.")
    code = serializers.CharField(help_text="Stable machine-readable code, e.g. not_an_image, file_too_large.")
    errors = serializers.DictField(
        required=False, child=serializers.JSONField(),
        help_text="Per-field messages when the request body or query failed validation.",
    )


class BatchUploadSerializer(serializers.Serializer):
    images = serializers.ListField(child=serializers.FileField(allow_empty_file=True), required=False)
    archive = serializers.FileField(required=False, allow_empty_file=True, help_text="A ZIP of images.")
    kind = serializers.ChoiceField(choices=BatchJob.Kind.choices, default=BatchJob.Kind.CELLS)

    def validate(self, attrs):
        if not attrs.get("images") and not attrs.get("archive"):
            raise serializers.ValidationError(
                "Send one or more `images` or one `archive` ZIP.", code="no_files"
            )
        return attrs


JobSerializer = inline_serializer(
    "BatchJob",
    {
        "id": serializers.IntegerField(),
        "accession": serializers.CharField(),
        "kind": serializers.ChoiceField(choices=BatchJob.Kind.choices),
        "state": serializers.ChoiceField(choices=BatchJob.State.choices),
        "finished": serializers.BooleanField(),
        "created_by": serializers.CharField(help_text="Username of the user who sent the files."),
        "created_at": serializers.DateTimeField(),
        "started_at": serializers.DateTimeField(allow_null=True, help_text="Null until a worker starts it."),
        "finished_at": serializers.DateTimeField(allow_null=True, help_text="Null until every file is done."),
        "total": serializers.IntegerField(),
        "processed": serializers.IntegerField(),
        "percent": serializers.FloatField(),
        "counts": serializers.DictField(child=serializers.IntegerField()),
        "items": serializers.ListField(child=serializers.DictField()),
    },
)


class SpecimenOwnerSerializer(serializers.Serializer):
    username = serializers.CharField(help_text="The technologist (or reviewer) the specimen now belongs to.")
