from django.urls import path
from rest_framework.routers import DefaultRouter

from classifier.api import views

router = DefaultRouter()
router.register("classifications", views.ClassificationViewSet, basename="api-classification")
router.register("specimens", views.SpecimenViewSet, basename="api-specimen")

urlpatterns = [
    path("auth/token/", views.TokenView.as_view(), name="api-token"),
    path("model/", views.ModelInfoView.as_view(), name="api-model"),
    *router.urls,
]

# Specimens as a unit of work: batch jobs, sign-off and reports (classifier/api/jobs.py).
from django.urls import path as _path  # noqa: E402

from classifier.api import jobs as _jobs  # noqa: E402

urlpatterns += [
    _path("specimens/<str:accession>/batch/", _jobs.SpecimenBatchView.as_view(), name="api-specimen-batch"),
    _path("specimens/<str:accession>/sign/", _jobs.SpecimenSignView.as_view(), name="api-specimen-sign"),
    _path("specimens/<str:accession>/owner/", _jobs.SpecimenOwnerView.as_view(), name="api-specimen-owner"),
    _path(
        "specimens/<str:accession>/report.pdf", _jobs.SpecimenReportPdfView.as_view(),
        name="api-specimen-report-pdf",
    ),
    _path(
        "specimens/<str:accession>/report.csv", _jobs.SpecimenReportCsvView.as_view(),
        name="api-specimen-report-csv",
    ),
    _path("jobs/<int:pk>/", _jobs.JobDetailView.as_view(), name="api-job-detail"),
    _path("jobs/<int:pk>/rerun/", _jobs.JobRerunView.as_view(), name="api-job-rerun"),
]

# The LIS interface (issue 19): orders, amendments, report versions, FHIR metadata (classifier/api/lis.py).
from classifier.api import lis as _lis  # noqa: E402

urlpatterns += [
    _path("orders/", _lis.OrderView.as_view(), name="api-orders"),
    _path("specimens/<str:accession>/amend/", _lis.SpecimenAmendView.as_view(), name="api-specimen-amend"),
    _path(
        "specimens/<str:accession>/versions/",
        _lis.SpecimenVersionsView.as_view(),
        name="api-specimen-versions",
    ),
    _path("fhir/metadata", _lis.FHIRMetadataView.as_view(), name="api-fhir-metadata"),
]
