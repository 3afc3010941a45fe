"""API for specimens as a unit of work: batch jobs, sign-off and reports.

POST /api/v1/specimens/{accession}/batch/   many ``images`` or one ``archive`` ZIP -> 202 with the job
GET  /api/v1/jobs/{id}/                      progress and per-file outcome
POST /api/v1/jobs/{id}/rerun/                retry the files that failed while running
POST /api/v1/specimens/{accession}/sign/     reviewers only; 409 while cells are unreviewed
GET  /api/v1/specimens/{accession}/report.pdf and report.csv
"""

from django.core.exceptions import ValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from classifier import jobs, reports, selectors, services
from classifier.lookups import job_or_404, specimen_or_404
from classifier.models import BatchJob
from classifier.responses import private_attachment

CONFLICT_CODES = {"unreviewed", "signed", "empty", "running", "nothing_to_retry"}


def _conflict_or_raise(exc: ValidationError) -> Response:
    """State conflicts (not signable yet, already signed) answer 409; other errors go to the handler."""
    code = getattr(exc, "code", None)
    if code in CONFLICT_CODES:
        return Response({"detail": " ".join(exc.messages), "code": code}, status=status.HTTP_409_CONFLICT)
    raise exc


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
        "total": serializers.IntegerField(),
        "processed": serializers.IntegerField(),
        "percent": serializers.FloatField(),
        "counts": serializers.DictField(child=serializers.IntegerField()),
        "items": serializers.ListField(child=serializers.DictField()),
    },
)


class SpecimenBatchView(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        request={"multipart/form-data": BatchUploadSerializer},
        responses={202: JobSerializer},
        summary="Queue many images (or a ZIP) for a specimen as one background job",
    )
    def post(self, request, accession):
        payload = {"kind": request.data.get("kind", BatchJob.Kind.CELLS)}
        if request.FILES.getlist("images"):
            payload["images"] = request.FILES.getlist("images")
        if request.FILES.get("archive"):
            payload["archive"] = request.FILES["archive"]
        serializer = BatchUploadSerializer(data=payload)
        serializer.is_valid(raise_exception=True)
        job = jobs.job_create(
            user=request.user,
            accession=accession,
            files=serializer.validated_data.get("images", []),
            archive=serializer.validated_data.get("archive"),
            kind=serializer.validated_data["kind"],
        )
        body = jobs.job_progress(job=job)
        return Response(
            body,
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": request.build_absolute_uri(f"/api/v1/jobs/{job.pk}/")},
        )


class JobDetailView(APIView):
    @extend_schema(responses={200: JobSerializer}, summary="A batch job's progress and per-file outcome")
    def get(self, request, pk):
        return Response(jobs.job_progress(job=job_or_404(request, pk)))


class JobRerunView(APIView):
    @extend_schema(
        request=None, responses={202: JobSerializer}, summary="Retry a finished job's failed files"
    )
    def post(self, request, pk):
        job = job_or_404(request, pk)
        try:
            job = jobs.job_rerun(job=job, user=request.user)
        except ValidationError as exc:
            return _conflict_or_raise(exc)
        return Response(jobs.job_progress(job=job), status=status.HTTP_202_ACCEPTED)


class SpecimenSignView(APIView):
    @extend_schema(
        request=None,
        responses={200: OpenApiTypes.OBJECT, 409: OpenApiResponse(description="cells not reviewed yet")},
        summary="Sign a specimen (reviewers only): every cell reviewed, no unidentified cell left",
    )
    def post(self, request, accession):
        specimen = specimen_or_404(request, accession)
        try:
            specimen = services.specimen_sign(specimen=specimen, reviewer=request.user)
        except ValidationError as exc:
            return _conflict_or_raise(exc)
        differential = selectors.specimen_differential(specimen=specimen)
        return Response(differential)


class _FileRenderer(BaseRenderer):
    """Lets a client ask for the file's type in Accept; errors still come back as JSON text."""

    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if isinstance(data, bytes | str):
            return data
        return JSONRenderer().render(data)


class PdfRenderer(_FileRenderer):
    media_type = "application/pdf"
    format = "pdf"


class CsvRenderer(_FileRenderer):
    media_type = "text/csv"
    format = "csv"


class SpecimenReportPdfView(APIView):
    renderer_classes = [JSONRenderer, PdfRenderer]

    @extend_schema(
        responses={(200, "application/pdf"): OpenApiTypes.BINARY}, summary="The specimen's PDF report"
    )
    def get(self, request, accession):
        specimen = specimen_or_404(request, accession)
        return private_attachment(
            reports.specimen_report_pdf(specimen=specimen), "application/pdf",
            f"{specimen.accession}-report.pdf",
        )


class SpecimenReportCsvView(APIView):
    renderer_classes = [JSONRenderer, CsvRenderer]

    @extend_schema(responses={(200, "text/csv"): OpenApiTypes.STR}, summary="The specimen's cells as CSV")
    def get(self, request, accession):
        specimen = specimen_or_404(request, accession)
        return private_attachment(
            reports.specimen_report_csv(specimen=specimen), "text/csv; charset=utf-8",
            f"{specimen.accession}-cells.csv",
        )
