"""Issue 19: review endpoints for middleware. A reviewer lists a specimen's cells, confirms or
reclassifies them and signs, through the portal's services and rules: reviewers only (technologists,
Interface accounts and users without a role get 403), no change to a signed cell (amend instead), no
overwrite of a review made since the client read the cell. Bad input changes nothing."""

import pytest
from django.contrib.auth.models import Group

from accounts.roles import INTERFACE
from accounts.tests.factories import UserFactory
from classifier.models import Classification, ReportVersion, ReviewEvent, ReviewState, Specimen, Status
from classifier.tests.factories import ClassificationFactory, SpecimenFactory
from classifier.tests.test_lis import client_for

URL = "/api/v1/specimens/ACC-REV/cells/"


@pytest.fixture
def specimen(db, user):
    specimen = SpecimenFactory(accession="ACC-REV", created_by=user)
    ClassificationFactory(owner=user, specimen=specimen, predicted_label="NEUTROPHIL", external_id="IMG-1")
    ClassificationFactory(owner=user, specimen=specimen, predicted_label="LYMPHOCYTE", unidentified=True)
    return specimen


@pytest.fixture
def interface(db):
    user = UserFactory(username="lis")
    user.groups.add(Group.objects.get_or_create(name=INTERFACE)[0])
    return user


def cells_of(specimen) -> list[Classification]:
    return list(specimen.cells.order_by("id"))


def snapshot(specimen) -> list[tuple]:
    return [(c.final_label, c.review_state, c.reviewed_by_id) for c in cells_of(specimen)]


@pytest.mark.django_db
def test_a_reviewer_lists_the_cells_with_their_classes(specimen, reviewer):
    first, second = cells_of(specimen)
    response = client_for(reviewer).get(URL)
    assert response.status_code == 200
    body = response.json()
    assert (body["accession"], body["signed"], len(body["review_version"])) == ("ACC-REV", False, 32)
    assert [
        {k: c[k] for k in ("id", "label", "predicted_label", "final_label", "status", "review_state",
                           "review_version", "external_id", "accession")}
        for c in body["cells"]
    ] == [
        {"id": first.pk, "label": "NEUTROPHIL", "predicted_label": "NEUTROPHIL", "final_label": None,
         "status": "classified", "review_state": "unreviewed", "review_version": "unreviewed@",
         "external_id": "IMG-1", "accession": "ACC-REV"},
        {"id": second.pk, "label": None, "predicted_label": "LYMPHOCYTE", "final_label": None,
         "status": "unidentified", "review_state": "unreviewed", "review_version": "unreviewed@",
         "external_id": None, "accession": "ACC-REV"},
    ]
    assert body["cells"][0]["image_url"] == f"http://testserver/api/v1/classifications/{first.pk}/image/"


@pytest.mark.django_db
def test_only_reviewers_may_list_review_or_sign(specimen, user, interface, no_role_user):
    cell = cells_of(specimen)[0]
    before = snapshot(specimen)
    denied = {"detail": "Only reviewers may review results.", "code": "permission_denied"}
    for who in (user, interface, no_role_user):
        api = client_for(who)
        listed = api.get(URL)
        assert (listed.status_code, listed.json()) == (403, denied)
        refused = api.post(f"{URL}{cell.pk}/review/", {"label": "MONOCYTE"}, format="json")
        assert (refused.status_code, refused.json()) == (403, denied)
        # Signing: 403 for those who see the specimen; a user without a role does not see it (404).
        sign = api.post("/api/v1/specimens/ACC-REV/sign/")
        assert sign.status_code == (404 if who is no_role_user else 403)
    assert snapshot(specimen) == before
    assert not ReviewEvent.objects.exists()
    assert not Specimen.objects.get(pk=specimen.pk).is_signed


@pytest.mark.django_db
def test_reclassify_confirm_and_sign_through_the_api(specimen, reviewer):
    first, second = cells_of(specimen)
    api = client_for(reviewer)
    body = {"label": "MONOCYTE", "seen": "unreviewed@"}
    response = api.post(f"{URL}{second.pk}/review/", body, format="json")
    assert response.status_code == 200, response.json()
    second.refresh_from_db()
    assert (second.final_label, second.review_state, second.reviewed_by) == (
        "MONOCYTE", "reclassified", reviewer,
    )
    body = response.json()
    keys = ("id", "label", "final_label", "review_state", "reviewed_by", "review_version")
    assert {k: body[k] for k in keys} == {
        "id": second.pk, "label": "MONOCYTE", "final_label": "MONOCYTE", "review_state": "reclassified",
        "reviewed_by": "reviewer", "review_version": second.review_version,
    }
    confirmed = api.post(f"{URL}{first.pk}/review/", {"label": "NEUTROPHIL"}, format="json")
    assert confirmed.json()["review_state"] == "confirmed"
    events = ReviewEvent.objects.order_by("id").values_list("classification_id", "action", "to_label")
    assert list(events) == [
        (second.pk, "reclassify", "MONOCYTE"),
        (first.pk, "confirm", "NEUTROPHIL"),
    ]
    signed = api.post("/api/v1/specimens/ACC-REV/sign/")
    assert signed.status_code == 200
    assert [(r["label"], r["count"]) for r in signed.json()["classes"] if r["count"]] == [
        ("NEUTROPHIL", 1), ("MONOCYTE", 1),
    ]
    assert {c.review_state for c in cells_of(specimen)} == {ReviewState.SIGNED}
    assert ReportVersion.objects.filter(specimen=specimen, number=1).exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        (
            {"label": "NEUTROFIL"},
            400,
            {"detail": 'label: "NEUTROFIL" is not a valid choice.', "code": "invalid_choice"},
        ),
        ({}, 400, {"detail": "label: This field is required.", "code": "required"}),
        (
            {"label": "MONOCYTE", "seen": "confirmed@2020-01-01T00:00:00+00:00"},
            409,
            {"detail": "This cell changed after your page was loaded (now unreviewed); look at it again "
                       "before you decide.", "code": "changed"},
        ),
    ],
)
def test_bad_input_or_a_stale_read_changes_nothing(specimen, reviewer, body, status, expected):
    cell = cells_of(specimen)[0]
    before = snapshot(specimen)
    response = client_for(reviewer).post(f"{URL}{cell.pk}/review/", body, format="json")
    assert response.status_code == status
    assert {k: response.json()[k] for k in ("detail", "code")} == expected
    assert snapshot(specimen) == before
    assert not ReviewEvent.objects.exists()


@pytest.mark.django_db
def test_a_cell_of_another_specimen_or_unknown_is_404_and_a_pending_one_409(specimen, reviewer, user):
    elsewhere = SpecimenFactory(accession="ACC-OTHER", created_by=user)
    other = ClassificationFactory(owner=user, specimen=elsewhere)
    api = client_for(reviewer)
    assert api.post(f"{URL}{other.pk}/review/", {"label": "MONOCYTE"}, format="json").status_code == 404
    assert api.post(f"{URL}999999/review/", {"label": "MONOCYTE"}, format="json").status_code == 404
    assert api.get("/api/v1/specimens/ACC-NONE/cells/").status_code == 404
    pending = ClassificationFactory(
        owner=user, specimen=specimen, status=Status.PENDING, predicted_label="", confidence=None,
        probabilities={},
    )
    refused = api.post(f"{URL}{pending.pk}/review/", {"label": "MONOCYTE"}, format="json")
    assert (refused.status_code, refused.json()) == (
        409, {"detail": "The model has not classified this image yet.", "code": "pending"},
    )
    other.refresh_from_db()
    pending.refresh_from_db()
    assert (other.final_label, other.review_state) == ("", ReviewState.UNREVIEWED)
    assert (pending.final_label, pending.review_state) == ("", ReviewState.UNREVIEWED)


@pytest.mark.django_db
def test_a_signed_cell_is_corrected_only_by_an_amendment(specimen, reviewer):
    api = client_for(reviewer)
    for cell in cells_of(specimen):
        api.post(f"{URL}{cell.pk}/review/", {"label": "NEUTROPHIL"}, format="json")
    assert api.post("/api/v1/specimens/ACC-REV/sign/").status_code == 200
    assert api.get(URL).json()["signed"] is True
    cell = cells_of(specimen)[0]
    refused = api.post(f"{URL}{cell.pk}/review/", {"label": "MONOCYTE"}, format="json")
    assert (refused.status_code, refused.json()) == (
        409,
        {"detail": "This result is signed and final; it cannot be changed. Amend the specimen to correct it.",
         "code": "signed"},
    )
    cell.refresh_from_db()
    assert (cell.final_label, cell.review_state) == ("NEUTROPHIL", ReviewState.SIGNED)
    amended = api.post(
        "/api/v1/specimens/ACC-REV/amend/",
        {"reason": "A monocyte.", "labels": {str(cell.pk): "MONOCYTE"}},
        format="json",
    )
    assert (amended.status_code, amended.json()["number"]) == (200, 2)
    cell.refresh_from_db()
    assert cell.final_label == "MONOCYTE"


@pytest.mark.django_db
def test_the_review_endpoints_are_in_the_openapi_schema(reviewer):
    schema = client_for(reviewer).get("/api/schema/", {"format": "json"}).json()
    listed = schema["paths"]["/api/v1/specimens/{accession}/cells/"]["get"]
    review = schema["paths"]["/api/v1/specimens/{accession}/cells/{id}/review/"]["post"]
    assert (listed["tags"], review["tags"]) == (["review"], ["review"])
    assert {"200", "403", "404"} <= set(listed["responses"])
    assert {"200", "400", "403", "404", "409"} <= set(review["responses"])
    body = review["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(schema["components"]["schemas"][body]["properties"]) == {"label", "seen"}
