"""API URLs (under /api/v1/): results, specimens, batch jobs and reports, the LIS interface."""

from django.urls import path
from rest_framework.routers import DefaultRouter

from classifier.api.views import auth, cells, jobs, lis, model, review, specimens

router = DefaultRouter()
router.register("classifications", cells.ClassificationViewSet, basename="api-classification")
router.register("specimens", specimens.SpecimenViewSet, basename="api-specimen")

urlpatterns = [
    path("auth/token/", auth.TokenView.as_view(), name="api-token"),
    path("model/", model.ModelInfoView.as_view(), name="api-model"),
    *router.urls,
    # Specimens as a unit of work: batch jobs, sign-off, owner and reports.
    path("specimens/<str:accession>/batch/", jobs.SpecimenBatchView.as_view(), name="api-specimen-batch"),
    path("specimens/<str:accession>/sign/", jobs.SpecimenSignView.as_view(), name="api-specimen-sign"),
    path("specimens/<str:accession>/owner/", jobs.SpecimenOwnerView.as_view(), name="api-specimen-owner"),
    path(
        "specimens/<str:accession>/report.pdf", jobs.SpecimenReportPdfView.as_view(),
        name="api-specimen-report-pdf",
    ),
    path(
        "specimens/<str:accession>/report.csv", jobs.SpecimenReportCsvView.as_view(),
        name="api-specimen-report-csv",
    ),
    path("jobs/<int:pk>/", jobs.JobDetailView.as_view(), name="api-job-detail"),
    path("jobs/<int:pk>/rerun/", jobs.JobRerunView.as_view(), name="api-job-rerun"),
    # The LIS interface (issue 19): orders, amendments, report versions, FHIR metadata.
    path("orders/", lis.OrderView.as_view(), name="api-orders"),
    path("specimens/<str:accession>/amend/", lis.SpecimenAmendView.as_view(), name="api-specimen-amend"),
    path(
        "specimens/<str:accession>/versions/", lis.SpecimenVersionsView.as_view(),
        name="api-specimen-versions",
    ),
    path("fhir/metadata", lis.FHIRMetadataView.as_view(), name="api-fhir-metadata"),
    # Review for middleware (issue 19): reviewers only; signing is sign/ above.
    path("specimens/<str:accession>/cells/", review.SpecimenCellsView.as_view(), name="api-specimen-cells"),
    path(
        "specimens/<str:accession>/cells/<int:pk>/review/", review.CellReviewView.as_view(),
        name="api-specimen-cell-review",
    ),
]
