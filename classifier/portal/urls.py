"""Portal URLs: the dashboard, single cells, the review worklist, specimens, batch jobs and reports."""

from django.urls import path

from classifier.portal.views import amend, cells, dashboard, review, specimens, uploads

urlpatterns = [
    path("", dashboard.DashboardView.as_view(), name="dashboard"),
    path("upload/", uploads.UploadView.as_view(), name="upload"),
    path("model/", dashboard.ModelInfoView.as_view(), name="model-info"),
    path("model/ready.json", dashboard.model_ready_view, name="model-ready"),
    path("classifications/", cells.ClassificationListView.as_view(), name="classification-list"),
    path("classifications/export.csv", cells.classification_export_view, name="classification-export"),
    path("classifications/<int:pk>/", cells.ClassificationDetailView.as_view(), name="classification-detail"),
    path("classifications/<int:pk>/image/", cells.classification_image_view, name="classification-image"),
    path(
        "classifications/<int:pk>/heatmap/", cells.classification_heatmap_view, name="classification-heatmap"
    ),
    path(
        "classifications/<int:pk>/delete/", cells.ClassificationDeleteView.as_view(),
        name="classification-delete",
    ),
    path("classifications/<int:pk>/review/", cells.classification_review_view, name="classification-review"),
    path("review/", review.worklist_view, name="review-worklist"),
    path("review/cells/", cells.ReviewQueueView.as_view(), name="review-queue"),
    path("specimens/", specimens.SpecimenListView.as_view(), name="specimen-list"),
    path("specimens/export.csv", specimens.specimens_export_csv_view, name="specimen-export"),
    path("specimens/<str:accession>/", specimens.SpecimenDetailView.as_view(), name="specimen-detail"),
    path("specimens/<str:accession>/sign/", review.specimen_sign_view, name="specimen-sign"),
    path("specimens/<str:accession>/review/", review.specimen_review_view, name="specimen-review"),
    path("specimens/<str:accession>/amend/", amend.specimen_amend_view, name="specimen-amend"),
    path(
        "specimens/<str:accession>/review/state.json",
        review.specimen_review_state_view,
        name="specimen-review-state",
    ),
    path(
        "specimens/<str:accession>/review/cells.json",
        review.specimen_review_cells_view,
        name="specimen-review-cells",
    ),
    path(
        "specimens/<str:accession>/cells/<int:pk>/thumb.jpg",
        review.specimen_cell_thumb_view,
        name="specimen-cell-thumb",
    ),
    path(
        "specimens/<str:accession>/report.pdf", specimens.specimen_report_pdf_view, name="specimen-report-pdf"
    ),
    path(
        "specimens/<str:accession>/report.csv", specimens.specimen_report_csv_view, name="specimen-report-csv"
    ),
    path(
        "specimens/<str:accession>/cells/<int:pk>/image/",
        specimens.specimen_cell_image_view,
        name="specimen-cell-image",
    ),
    path("batch/", specimens.BatchUploadView.as_view(), name="batch-upload"),
    path("fields/", specimens.WholeFieldUploadView.as_view(), name="field-upload"),
    path("jobs/", specimens.job_list_view, name="job-list"),
    path("jobs/<int:pk>/", specimens.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<int:pk>/status.json", specimens.job_status_view, name="job-status"),
    path("jobs/<int:pk>/rerun/", specimens.job_rerun_view, name="job-rerun"),
    path(
        "jobs/<int:pk>/fields/<int:position>.png",
        specimens.JobFieldImageView.as_view(),
        name="job-field-image",
    ),
]
