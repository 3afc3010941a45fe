"""Specimen, batch-job and report pages (included from classifier/urls.py)."""

from django.urls import path

from classifier import amend_views, review_views
from classifier import specimen_views as views

urlpatterns = [
    path("specimens/", views.SpecimenListView.as_view(), name="specimen-list"),
    path("specimens/export.csv", views.specimens_export_csv_view, name="specimen-export"),
    path("specimens/<str:accession>/", views.SpecimenDetailView.as_view(), name="specimen-detail"),
    path("specimens/<str:accession>/sign/", review_views.specimen_sign_view, name="specimen-sign"),
    path("specimens/<str:accession>/review/", review_views.specimen_review_view, name="specimen-review"),
    path("specimens/<str:accession>/amend/", amend_views.specimen_amend_view, name="specimen-amend"),
    path(
        "specimens/<str:accession>/review/state.json",
        review_views.specimen_review_state_view,
        name="specimen-review-state",
    ),
    path(
        "specimens/<str:accession>/review/cells.json",
        review_views.specimen_review_cells_view,
        name="specimen-review-cells",
    ),
    path(
        "specimens/<str:accession>/cells/<int:pk>/thumb.jpg",
        review_views.specimen_cell_thumb_view,
        name="specimen-cell-thumb",
    ),
    path("specimens/<str:accession>/report.pdf", views.specimen_report_pdf_view, name="specimen-report-pdf"),
    path("specimens/<str:accession>/report.csv", views.specimen_report_csv_view, name="specimen-report-csv"),
    path(
        "specimens/<str:accession>/cells/<int:pk>/image/",
        views.specimen_cell_image_view,
        name="specimen-cell-image",
    ),
    path("batch/", views.BatchUploadView.as_view(), name="batch-upload"),
    path("fields/", views.WholeFieldUploadView.as_view(), name="field-upload"),
    path("jobs/", views.job_list_view, name="job-list"),
    path("jobs/<int:pk>/", views.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<int:pk>/status.json", views.job_status_view, name="job-status"),
    path("jobs/<int:pk>/rerun/", views.job_rerun_view, name="job-rerun"),
    path(
        "jobs/<int:pk>/fields/<int:position>.png", views.JobFieldImageView.as_view(), name="job-field-image"
    ),
]
