"""LIS API: specimens as a unit of work: batch jobs, sign-off, owner and reports.

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
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from classifier.api.differential_serializers import SignedDifferentialSerializer
from classifier.api.renderers import CsvRenderer, PdfRenderer
from classifier.api.schema import (
    COMMON_ERRORS,
    JOB_NOT_FOUND,
    SPECIMEN_NOT_FOUND,
    error_response,
    json_errors,
)
from classifier.api.serializers import (
    BatchUploadSerializer,
    JobSerializer,
    SpecimenOwnerSerializer,
)
from classifier.api.throttling import UploadRateThrottle
from classifier.api.views.base import JSONErrorsMixin
from classifier.jobs import selectors as job_selectors
from classifier.jobs import services as job_services
from classifier.lookups import job_or_404, specimen_or_404
from classifier.models import BatchJob
from classifier.responses import private_attachment
from classifier.specimens import report_csv, report_pdf, signoff
from classifier.specimens import selectors as specimen_selectors
from classifier.specimens import services as specimen_services

CONFLICT_CODES = {"unreviewed", "signed", "empty", "running", "nothing_to_retry"}


def _conflict_or_raise(exc: ValidationError) -> Response:
    """State conflicts (not signable yet, already signed) answer 409; other errors go to the handler."""
    code = getattr(exc, "code", None)
    if code in CONFLICT_CODES:
        return Response({"detail": " ".join(exc.messages), "code": code}, status=status.HTTP_409_CONFLICT)
    raise exc


class SpecimenBatchView(JSONErrorsMixin, APIView):
    parser_classes = [MultiPartParser, FormParser]

    def get_throttles(self):
        """A batch counts against the same per-user ``uploads`` rate as single uploads."""
        return [*super().get_throttles(), UploadRateThrottle()]

    @extend_schema(
        request={"multipart/form-data": BatchUploadSerializer},
        responses={
            202: JobSerializer,
            **json_errors(
                {
                    400: error_response(
                        "No files, a bad accession number or ZIP, too many files or form fields, or a "
                        "specimen another technologist opened or that is signed.",
                        "accession_taken",
                        "Images cannot be added to accession ACC-7 from your account; ask a reviewer to "
                        "add them, or to assign the specimen to you.",
                        (
                            "no_usable_files",
                            "No file in the upload is an image that can be classified (notes.txt: Not an "
                            "image file; upload JPEG, PNG, TIFF, BMP or WebP (by extension).); nothing was "
                            "stored.",
                        ),
                        ("too_many_files", "1001 files were sent; the limit is 1000 per job."),
                        (
                            "too_many_fields",
                            "The number of GET/POST parameters exceeded "
                            "settings.DATA_UPLOAD_MAX_NUMBER_FIELDS.",
                        ),
                        (
                            "invalid",
                            "An accession number is 1-64 letters, digits, '.', '_' or '-', starting "
                            "with a letter or digit.",
                        ),
                        ("no_files", "Send one or more `images` or one `archive` ZIP."),
                        ("bad_archive", "The archive is not a readable ZIP file."),
                        ("specimen_signed", specimen_services.signed_refusal("ACC-7")),
                    ),
                    403: error_response(
                        "Your account has no role that may submit images (or, signed in with a "
                        "session, the CSRF token is missing).",
                        "permission_denied",
                        "Only technologists and reviewers may submit images.",
                    ),
                    429: error_response(
                        "Too many uploads a minute (the `uploads` rate, shared with single uploads), or "
                        "too many of your jobs are still waiting or running.",
                        "too_many_jobs",
                        "You have 4 batch jobs waiting or running; the limit is 4. Send this one when one "
                        "of them has finished.",
                        ("throttled", "Request was throttled. Expected available in 42 seconds."),
                    ),
                    415: error_response(
                        "Not multipart/form-data.",
                        "unsupported_media_type",
                        'Unsupported media type "application/json" in request.',
                    ),
                    **{k: v for k, v in COMMON_ERRORS.items() if k != 429},
                }
            ),
        },
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
        job = job_services.job_create(
            user=request.user,
            accession=accession,
            files=serializer.validated_data.get("images", []),
            archive=serializer.validated_data.get("archive"),
            kind=serializer.validated_data["kind"],
        )
        body = job_selectors.job_progress(job=job)
        return Response(
            body,
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": request.build_absolute_uri(f"/api/v1/jobs/{job.pk}/")},
        )


class JobDetailView(JSONErrorsMixin, APIView):
    @extend_schema(
        responses={200: JobSerializer, **json_errors({404: JOB_NOT_FOUND, **COMMON_ERRORS})},
        summary="A batch job's progress and per-file outcome",
    )
    def get(self, request, pk):
        return Response(job_selectors.job_progress(job=job_or_404(request, pk)))


class JobRerunView(JSONErrorsMixin, APIView):
    @extend_schema(
        request=None,
        responses={
            202: JobSerializer,
            **json_errors(
                {
                    403: error_response(
                        "Only the job's submitter or a reviewer may re-run it.",
                        "permission_denied",
                        "Only the submitter or a reviewer may re-run a job.",
                    ),
                    404: JOB_NOT_FOUND,
                    409: error_response(
                        "The job is still running, or no file of it failed.",
                        "nothing_to_retry",
                        "No failed file can be retried.",
                        ("running", "The job is still running."),
                    ),
                    **COMMON_ERRORS,
                }
            ),
        },
        summary="Retry a finished job's failed files",
    )
    def post(self, request, pk):
        job = job_or_404(request, pk)
        try:
            job = job_services.job_rerun(job=job, user=request.user)
        except ValidationError as exc:
            return _conflict_or_raise(exc)
        return Response(job_selectors.job_progress(job=job), status=status.HTTP_202_ACCEPTED)


class SpecimenSignView(JSONErrorsMixin, APIView):
    @extend_schema(
        request=None,
        responses={
            200: OpenApiResponse(
                SignedDifferentialSerializer, description="The signed specimen's differential."
            ),
            **json_errors(
                {
                    403: error_response(
                        "Only reviewers may sign specimens.",
                        "permission_denied",
                        "Only reviewers may sign specimens.",
                    ),
                    404: SPECIMEN_NOT_FOUND,
                    409: error_response(
                        "Not signable now: cells are unreviewed, it has no cell, or it is signed already.",
                        "unreviewed",
                        "3 cell(s) are not reviewed yet (0 unidentified); review every cell before signing.",
                        ("signed", "Specimen ACC-7 is already signed."),
                        ("empty", "Specimen ACC-7 has no cells to sign."),
                    ),
                    **COMMON_ERRORS,
                }
            ),
        },
        summary="Sign a specimen (reviewers only): every cell reviewed, no unidentified cell left",
    )
    def post(self, request, accession):
        specimen = specimen_or_404(request, accession)
        try:
            specimen = signoff.specimen_sign(specimen=specimen, reviewer=request.user)
        except ValidationError as exc:
            return _conflict_or_raise(exc)
        differential = specimen_selectors.specimen_differential(specimen=specimen)
        return Response(SignedDifferentialSerializer(differential).data)


REPORT_ERRORS = json_errors({404: SPECIMEN_NOT_FOUND, **COMMON_ERRORS})


class SpecimenReportPdfView(JSONErrorsMixin, APIView):
    renderer_classes = [JSONRenderer, PdfRenderer]

    @extend_schema(
        responses={(200, "application/pdf"): OpenApiTypes.BINARY, **REPORT_ERRORS},
        summary="The specimen's PDF report",
    )
    def get(self, request, accession):
        specimen = specimen_or_404(request, accession)
        return private_attachment(
            report_pdf.specimen_report_pdf(specimen=specimen),
            "application/pdf",
            f"{specimen.accession}-report.pdf",
        )


class SpecimenReportCsvView(JSONErrorsMixin, APIView):
    renderer_classes = [JSONRenderer, CsvRenderer]

    @extend_schema(
        responses={(200, "text/csv"): OpenApiTypes.STR, **REPORT_ERRORS},
        summary="The specimen's cells as CSV",
    )
    def get(self, request, accession):
        specimen = specimen_or_404(request, accession)
        return private_attachment(
            report_csv.specimen_report_csv(specimen=specimen),
            "text/csv; charset=utf-8",
            f"{specimen.accession}-cells.csv",
        )


class SpecimenOwnerView(JSONErrorsMixin, APIView):
    @extend_schema(
        request=SpecimenOwnerSerializer,
        responses={
            200: inline_serializer(
                "SpecimenOwner", {"accession": serializers.CharField(), "owner": serializers.CharField()}
            ),
            **json_errors(
                {
                    400: error_response(
                        "No such user, or one with no role that may submit images.",
                        "invalid_owner",
                        "tech9 has no role that may submit images.",
                    ),
                    403: error_response(
                        "Only reviewers may assign specimens.",
                        "permission_denied",
                        "Only reviewers may assign a specimen to another user.",
                    ),
                    404: SPECIMEN_NOT_FOUND,
                    **COMMON_ERRORS,
                }
            ),
        },
        summary="Assign a specimen to another user (reviewers only): its accession, cells and reports",
    )
    def post(self, request, accession):
        from django.contrib.auth import get_user_model

        specimen = specimen_or_404(request, accession)
        body = SpecimenOwnerSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        owner = get_user_model().objects.filter(username=body.validated_data["username"]).first()
        if owner is None:
            raise ValidationError(f"No user {body.validated_data['username']!r}.", code="invalid_owner")
        specimen = specimen_services.specimen_reassign(specimen=specimen, reviewer=request.user, owner=owner)
        return Response({"accession": specimen.accession, "owner": owner.get_username()})
