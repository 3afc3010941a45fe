"""Portal URLs. Specimen/batch/report pages add their own include line below."""

from django.urls import include, path

from classifier import review_views, views

urlpatterns = [
    path("", views.DashboardView.as_view(), name="dashboard"),
    path("upload/", views.UploadView.as_view(), name="upload"),
    path("model/", views.ModelInfoView.as_view(), name="model-info"),
    path("model/ready.json", views.model_ready_view, name="model-ready"),
    path("classifications/", views.ClassificationListView.as_view(), name="classification-list"),
    path("classifications/export.csv", views.classification_export_view, name="classification-export"),
    path("classifications/<int:pk>/", views.ClassificationDetailView.as_view(), name="classification-detail"),
    path("classifications/<int:pk>/image/", views.classification_image_view, name="classification-image"),
    path(
        "classifications/<int:pk>/heatmap/", views.classification_heatmap_view, name="classification-heatmap"
    ),
    path(
        "classifications/<int:pk>/delete/", views.ClassificationDeleteView.as_view(),
        name="classification-delete",
    ),
    path("classifications/<int:pk>/review/", views.classification_review_view, name="classification-review"),
    path("review/", review_views.worklist_view, name="review-worklist"),
    path("review/cells/", views.ReviewQueueView.as_view(), name="review-queue"),
    path("", include("classifier.specimen_urls")),
]
