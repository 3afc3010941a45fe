"""Django admin: thumbnails via the private view, filters, search, bulk actions through services."""

import pytest
from django.urls import reverse

from classifier.models import ReviewEvent, ReviewState
from classifier.tests.factories import ClassificationFactory, ReviewEventFactory, SpecimenFactory

pytestmark = pytest.mark.django_db


def test_changelist_shows_private_thumbnails_and_filters(admin_client, user):
    cell = ClassificationFactory(owner=user, model_version="v-abc")
    response = admin_client.get(reverse("admin:classifier_classification_changelist"))
    assert response.status_code == 200
    html = response.content.decode()
    assert f'<img src="/classifications/{cell.pk}/image/" alt="cell #{cell.pk}"' in html
    assert "/media/" not in html
    for title in ("predicted label", "status", "review state", "model version", "created at"):
        assert f"By {title}" in html
    assert "v-abc" in html


def test_changelist_filter_and_search(admin_client, user):
    eos = ClassificationFactory(owner=user, predicted_label="EOSINOPHIL", original_filename="alpha.jpg")
    mono = ClassificationFactory(owner=user, predicted_label="MONOCYTE", original_filename="beta.jpg")
    url = reverse("admin:classifier_classification_changelist")
    filtered = admin_client.get(url, {"predicted_label__exact": "MONOCYTE"})
    assert [c.pk for c in filtered.context["cl"].result_list] == [mono.pk]
    searched = admin_client.get(url, {"q": "alpha"})
    assert [c.pk for c in searched.context["cl"].result_list] == [eos.pk]


def test_change_page_is_read_only_with_preview_and_audit(admin_client, user, reviewer):
    cell = ClassificationFactory(owner=user)
    ReviewEventFactory(classification=cell, actor=reviewer)
    url = reverse("admin:classifier_classification_change", args=[cell.pk])
    html = admin_client.get(url).content.decode()
    assert f'src="/classifications/{cell.pk}/image/"' in html
    assert 'name="predicted_label"' not in html  # model output is not editable here
    assert "reviewer" in html
    assert "Confirmed" in html
    assert admin_client.get(reverse("admin:classifier_classification_add")).status_code == 403


def test_bulk_confirm_action_reviews_through_the_service(admin_client, admin_user, user):
    unreviewed = ClassificationFactory(owner=user, predicted_label="LYMPHOCYTE")
    signed = ClassificationFactory(owner=user, review_state=ReviewState.SIGNED, final_label="EOSINOPHIL")
    response = admin_client.post(
        reverse("admin:classifier_classification_changelist"),
        {"action": "confirm_selected", "_selected_action": [unreviewed.pk, signed.pk]},
        follow=True,
    )
    html = response.content.decode()
    assert "1 result(s) confirmed." in html
    assert "This result is signed and final; it cannot be changed." in html
    unreviewed.refresh_from_db()
    assert (unreviewed.review_state, unreviewed.final_label, unreviewed.reviewed_by) == (
        "confirmed", "LYMPHOCYTE", admin_user,
    )
    assert list(ReviewEvent.objects.values_list("classification", "action", "actor")) == [
        (unreviewed.pk, "confirm", admin_user.pk)
    ]


def test_cells_cannot_be_signed_one_by_one_in_the_admin(admin_client, user):
    """Issue 16: a specimen is signed as a whole; the cell list has no sign action any more."""
    reviewed = ClassificationFactory(owner=user, review_state=ReviewState.CONFIRMED, final_label="EOSINOPHIL")
    response = admin_client.post(
        reverse("admin:classifier_classification_changelist"),
        {"action": "sign_selected", "_selected_action": [reviewed.pk]},
        follow=True,
    )
    assert response.status_code == 200
    reviewed.refresh_from_db()
    assert reviewed.review_state == "confirmed"
    assert reviewed.signed_at is None


def test_specimen_admin_lists_cells_and_refuses_unreviewed_sign(admin_client, user):
    specimen = SpecimenFactory(created_by=user, accession="ACC-ADM")
    cell = ClassificationFactory(owner=user, specimen=specimen)
    changelist = admin_client.get(reverse("admin:classifier_specimen_changelist"), {"q": "ACC-ADM"})
    assert [s.pk for s in changelist.context["cl"].result_list] == [specimen.pk]
    url = reverse("admin:classifier_specimen_change", args=[specimen.pk])
    change = admin_client.get(url).content.decode()
    assert f'src="/classifications/{cell.pk}/image/"' in change
    response = admin_client.post(
        reverse("admin:classifier_specimen_changelist"),
        {"action": "sign_selected", "_selected_action": [specimen.pk]},
        follow=True,
    )
    assert "1 cell(s) are not reviewed yet (0 unidentified)" in response.content.decode()
    specimen.refresh_from_db()
    assert specimen.signed_at is None


def test_review_events_are_read_only(admin_client, reviewer):
    event = ReviewEventFactory(actor=reviewer)
    assert admin_client.get(reverse("admin:classifier_reviewevent_changelist")).status_code == 200
    change_url = reverse("admin:classifier_reviewevent_change", args=[event.pk])
    page = admin_client.get(change_url)
    assert page.status_code == 200
    assert 'name="action"' not in page.content.decode()
    admin_client.post(change_url, {"action": "sign", "to_label": "MONOCYTE"})
    assert admin_client.get(reverse("admin:classifier_reviewevent_add")).status_code == 403
    assert admin_client.post(reverse("admin:classifier_reviewevent_delete", args=[event.pk]),
                             {"post": "yes"}).status_code == 403
    event.refresh_from_db()
    assert (event.action, event.to_label) == ("confirm", event.classification.predicted_label)


def test_bulk_confirm_leaves_unidentified_cells_for_a_reviewer_to_classify(admin_client, user):
    classified = ClassificationFactory(owner=user, predicted_label="MONOCYTE")
    unsure = ClassificationFactory(owner=user, unidentified=True, predicted_label="NEUTROPHIL")
    response = admin_client.post(
        reverse("admin:classifier_classification_changelist"),
        {"action": "confirm_selected", "_selected_action": [classified.pk, unsure.pk]},
        follow=True,
    )
    html = response.content.decode()
    assert "1 result(s) confirmed." in html
    refusal = "The model did not classify this cell (unidentified); choose its class."
    assert f"#{unsure.pk} unidentified: {refusal}" in html
    unsure.refresh_from_db()
    assert (unsure.review_state, unsure.final_label, unsure.label) == ("unreviewed", "", "")
    assert list(ReviewEvent.objects.values_list("classification", flat=True)) == [classified.pk]


def test_results_and_specimens_cannot_be_deleted_in_the_admin(admin_client, user, settings):
    """Results are records: the admin cannot delete them (it would bypass the audit and leave files);
    their submitter deletes an unreviewed one in the portal."""
    from pathlib import Path

    from classifier.models import Classification, Specimen

    cell = ClassificationFactory(owner=user, specimen=SpecimenFactory(created_by=user))
    changelist = reverse("admin:classifier_classification_changelist")
    actions = admin_client.get(changelist).context["action_form"].fields["action"].choices
    assert [name for name, _ in actions] == ["", "confirm_selected"]
    response = admin_client.post(changelist, {"action": "delete_selected", "_selected_action": [cell.pk]})
    assert response.status_code == 302  # "no action selected": nothing happens
    delete_page = reverse("admin:classifier_classification_delete", args=[cell.pk])
    assert admin_client.get(delete_page).status_code == 403
    specimen_delete = reverse("admin:classifier_specimen_delete", args=[cell.specimen.pk])
    assert admin_client.post(specimen_delete, {"post": "yes"}).status_code == 403
    assert Classification.objects.count() == Specimen.objects.count() == 1
    assert Path(cell.image.path).exists()
    assert Path(cell.heatmap.path).exists()
