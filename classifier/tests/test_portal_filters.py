"""ClassificationFilter (used by the history page and the API) and the factories."""

import datetime

import pytest
from django.utils import timezone

from classifier.cells.filters import ClassificationFilter
from classifier.models import Classification, ReviewState, Status
from classifier.tests.factories import ClassificationFactory, SpecimenFactory

pytestmark = pytest.mark.django_db


def _ids(params):
    filterset = ClassificationFilter(params, queryset=Classification.objects.all())
    return sorted(filterset.qs.values_list("pk", flat=True))


def test_factory_stores_image_and_heatmap_files(settings):
    cell = ClassificationFactory()
    assert cell.image.name.startswith("cells/")
    assert cell.heatmap.name.startswith("heatmaps/")
    assert (settings.MEDIA_ROOT / cell.image.name).is_file()
    assert cell.probabilities["EOSINOPHIL"] == 0.88


def test_filter_by_label_uses_final_label_over_predicted():
    predicted_eos = ClassificationFactory(predicted_label="EOSINOPHIL")
    reclassified = ClassificationFactory(
        predicted_label="EOSINOPHIL", final_label="MONOCYTE", review_state=ReviewState.RECLASSIFIED
    )
    assert _ids({"label": "EOSINOPHIL"}) == [predicted_eos.pk]
    assert _ids({"label": "MONOCYTE"}) == [reclassified.pk]


def test_filter_by_status_state_accession_and_search():
    specimen = SpecimenFactory(accession="ACC-77")
    a = ClassificationFactory(specimen=specimen, original_filename="smear_a.jpg")
    b = ClassificationFactory(unidentified=True, external_id="LIS-9", review_state=ReviewState.CONFIRMED)
    assert _ids({"status": Status.UNIDENTIFIED}) == [b.pk]
    assert _ids({"review_state": "confirmed"}) == [b.pk]
    assert _ids({"accession": "acc-77"}) == [a.pk]
    assert _ids({"q": "smear"}) == [a.pk]
    assert _ids({"q": "ACC-7"}) == [a.pk]
    assert _ids({"q": "lis-9"}) == [b.pk]
    assert _ids({"q": "  "}) == sorted([a.pk, b.pk])


def test_filter_by_date_range():
    old = ClassificationFactory()
    new = ClassificationFactory()
    Classification.objects.filter(pk=old.pk).update(created_at=timezone.now() - datetime.timedelta(days=10))
    today = timezone.now().date()
    assert _ids({"created_after": str(today)}) == [new.pk]
    assert _ids({"created_before": str(today - datetime.timedelta(days=5))}) == [old.pk]
    both = {"created_after": str(today - datetime.timedelta(days=11)), "created_before": str(today)}
    assert _ids(both) == [old.pk, new.pk]
