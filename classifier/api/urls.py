from django.urls import path
from rest_framework.routers import DefaultRouter

from . import views

router = DefaultRouter()
router.register("classifications", views.ClassificationViewSet, basename="api-classification")
router.register("specimens", views.SpecimenViewSet, basename="api-specimen")

urlpatterns = [
    path("auth/token/", views.TokenView.as_view(), name="api-token"),
    *router.urls,
]
