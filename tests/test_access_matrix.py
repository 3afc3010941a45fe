"""Who sees what: every object URL of the portal and the API against every role.

A technologist's result, specimen and job are visible to that technologist, to
reviewers and to admins; another technologist and a user without a role get
404 (they cannot even learn it exists); anonymous visitors are sent to sign in
(portal) or answered 401 (API).
"""

import pytest
from rest_framework.authtoken.models import Token

from classifier.cells import services as cell_services
from classifier.jobs import runner
from classifier.jobs import services as job_services
from classifier.tests.specimen_helpers import cell_png

SEES = {"owner": True, "reviewer": True, "admin": True, "other_tech": False, "no_role": False}

OBJECT_URLS = [
    "/classifications/{c}/",
    "/classifications/{c}/image/",
    "/classifications/{c}/heatmap/",
    "/specimens/{a}/",
    "/specimens/{a}/report.pdf",
    "/specimens/{a}/report.csv",
    "/specimens/{a}/cells/{c}/image/",
    "/jobs/{j}/",
    "/jobs/{j}/status.json",
    "/api/v1/classifications/{c}/",
    "/api/v1/classifications/{c}/image/",
    "/api/v1/classifications/{c}/heatmap/",
    "/api/v1/specimens/{a}/",
    "/api/v1/specimens/{a}/fhir/",
    "/api/v1/specimens/{a}/hl7/",
    "/api/v1/specimens/{a}/report.pdf",
    "/api/v1/specimens/{a}/report.csv",
    "/api/v1/jobs/{j}/",
]


@pytest.fixture
def world(db, user, other_user, reviewer, no_role_user, admin_user, django_capture_on_commit_callbacks):
    cell = cell_services.classification_create(user=user, data=cell_png("MONOCYTE"), accession="ACC-7")
    job = job_services.job_create(
        user=user, accession="ACC-7", files=[("b.png", cell_png("LYMPHOCYTE", seed=3))], enqueue=False
    )
    runner.job_run(job_id=job.pk)
    return {
        "ids": {"c": cell.pk, "a": "ACC-7", "j": job.pk},
        "users": {
            "owner": user, "other_tech": other_user, "reviewer": reviewer,
            "no_role": no_role_user, "admin": admin_user,
        },
    }


def _get(client, url, user):
    if url.startswith("/api/"):
        if user is not None:
            client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
        return client.get(url)
    if user is not None:
        client.force_login(user)
    return client.get(url)


def _body(response) -> str:
    if response.streaming:
        return b"".join(response.streaming_content).decode()
    return response.content.decode()


# One test per role walks every URL: the world is built once per role, not once per URL.
@pytest.mark.parametrize("role", [*SEES, "anonymous"])
def test_object_url_access(world, api_client, client, role):
    user = world["users"].get(role)
    for template in OBJECT_URLS:
        url = template.format(**world["ids"])
        is_api = url.startswith("/api/")
        response = _get(api_client if is_api else client, url, user)
        if role == "anonymous":
            if is_api:
                assert response.status_code == 401, url
            else:
                assert response.status_code == 302, url
                assert response["Location"].startswith("/accounts/login/"), url
        elif SEES[role]:
            assert response.status_code == 200, (role, url, response.status_code)
        else:
            assert response.status_code == 404, (role, url, response.status_code)


LIST_URLS = {
    # url: {role: expected status}
    "/": {},
    "/classifications/": {},
    "/classifications/export.csv": {},
    "/specimens/": {},
    "/specimens/export.csv": {},
    "/jobs/": {},
    "/review/": {"owner": 403, "other_tech": 403, "no_role": 403},
    "/upload/": {"no_role": 403},
    "/accounts/profile/": {},
    "/api/v1/classifications/": {},
    "/api/v1/specimens/": {},
}


@pytest.mark.parametrize("role", list(SEES))
def test_lists_show_only_what_the_role_may_see(world, api_client, client, role):
    user = world["users"][role]
    cell_url = "/classifications/{c}/".format(**world["ids"])
    for url, refusals in LIST_URLS.items():
        response = _get(api_client if url.startswith("/api/") else client, url, user)
        expected = refusals.get(role, 200)
        assert response.status_code == expected, (role, url, response.status_code)
        if expected != 200 or url in ("/accounts/profile/", "/upload/"):
            continue
        body = _body(response)
        if url.startswith("/api/"):
            assert (response.json()["count"] > 0) == SEES[role], (role, url)
        elif url == "/":
            assert (cell_url in body) == SEES[role], (role, url)
        else:
            assert ("ACC-7" in body) == SEES[role], (role, url)
