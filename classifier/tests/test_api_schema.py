"""The OpenAPI schema: served to signed-in users, valid, warning-free; Swagger UI from local assets."""

import pytest
from django.core.management import call_command

from classifier.cells import review as cell_review
from classifier.specimens import signoff

pytestmark = pytest.mark.django_db


def test_schema_validates_without_warnings(tmp_path):
    """`manage.py spectacular --validate --fail-on-warn` (the CI command) passes."""
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    for path in (
        "/api/v1/auth/token/",
        "/api/v1/classifications/",
        "/api/v1/classifications/{id}/image/",
        "/api/v1/specimens/{accession}/fhir/",
        "/api/v1/specimens/{accession}/hl7/",
    ):
        assert f"  {path}:" in text


def test_schema_needs_authentication_and_documents_errors(api_client, user):
    assert api_client.get("/api/schema/").status_code == 401
    api_client.force_authenticate(user)
    response = api_client.get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    create = schema["paths"]["/api/v1/classifications/"]["post"]
    assert set(create["responses"]) == {"200", "201", "400", "401", "403", "409", "413", "415", "429", "503"}
    assert list(create["requestBody"]["content"]) == ["multipart/form-data"]
    assert create["responses"]["415"]["content"]["application/json"]["examples"]
    assert set(schema["components"]["schemas"]["Error"]["required"]) == {"detail", "code"}
    fhir = schema["paths"]["/api/v1/specimens/{accession}/fhir/"]["get"]["responses"]["200"]["content"]
    assert "application/fhir+json" in fhir
    hl7 = schema["paths"]["/api/v1/specimens/{accession}/hl7/"]["get"]["responses"]["200"]["content"]
    assert "x-application/hl7-v2+er7" in hl7
    # Every field of a result is described.
    result = schema["components"]["schemas"]["Classification"]["properties"]
    assert {
        "id",
        "label",
        "confidence",
        "probabilities",
        "status",
        "review_state",
        "model_version",
        "created_at",
        "image_url",
        "heatmap_url",
    } <= set(result)
    model = schema["paths"]["/api/v1/model/"]["get"]
    assert set(model["responses"]) == {"200", "401", "503"}
    assert model["tags"] == ["model"]
    example = model["responses"]["200"]["content"]["application/json"]["examples"]["Model"]["value"]
    from ml.predictor import model_summary

    summary = model_summary({"classes": ["A"], "version": "v"})
    assert set(example) == set(summary)
    assert set(example["calibration"]) == set(summary["calibration"])


def test_swagger_ui_uses_local_assets(client, user):
    assert client.get("/api/docs/").status_code == 302  # people are sent to sign in
    client.force_login(user)
    response = client.get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in page
    assert "cdn.jsdelivr.net" not in page
    assert "unpkg.com" not in page


# The schema against real answers: for each endpoint below, every documented status is produced by a real
# request and every real answer is documented (its status, media type, error codes and body fields).



def _resolve(schema, node):
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


JSON_TYPES = {
    "integer": int,
    "number": (int, float),
    "string": str,
    "boolean": bool,
    "object": dict,
    "array": list,
}


def check_against_schema(schema, path, method, responses):
    documented = schema["paths"][path][method]["responses"]
    error = schema["components"]["schemas"]["Error"]
    codes = {}
    for response in responses:
        status = str(response.status_code)
        assert status in documented, (path, method, status, response.content[:300])
        content = documented[status]["content"]
        media_type = response["Content-Type"].split(";")[0]
        assert media_type in content, (path, method, status, media_type)
        if response.status_code >= 400:
            assert list(content) == ["application/json"], (path, method, status)
            body = response.json()
            assert {"detail", "code"} <= set(body) <= set(error["properties"]), body
            codes.setdefault(status, set()).add(body["code"])
            continue
        body_schema = _resolve(schema, content[media_type]["schema"])
        if media_type == "application/json" and "properties" in body_schema:
            body = response.json()
            properties = body_schema["properties"]
            assert set(body) == set(properties) == set(body_schema["required"]), (
                path,
                set(body) ^ set(properties),
            )
            for field, value in body.items():
                spec = _resolve(schema, properties[field])
                if value is None:
                    assert spec.get("nullable"), (path, field)
                elif "type" in spec:
                    assert isinstance(value, JSON_TYPES[spec["type"]]), (path, field, value)
    assert {str(r.status_code) for r in responses} == set(documented), path
    for status, examples in (
        (s, d["content"]["application/json"].get("examples", {})) for s, d in documented.items() if s >= "400"
    ):
        documented_codes = {example["value"]["code"] for example in examples.values()}
        assert documented_codes == codes[status], (path, method, status)


def test_job_sign_and_report_endpoints_document_what_they_answer(
    api_client, user, other_user, reviewer, no_role_user, monkeypatch, settings
):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.utils import timezone
    from rest_framework.test import APIClient
    from rest_framework.throttling import UserRateThrottle

    from classifier.jobs import services as job_services
    from classifier.models import BatchItem, BatchJob
    from classifier.tests.factories import ClassificationFactory, SpecimenFactory
    from classifier.tests.specimen_helpers import cell_png

    def client(who=None, csrf=False):
        c = APIClient(enforce_csrf_checks=csrf)
        if csrf:
            c.force_login(who)
        elif who is not None:
            c.force_authenticate(who)
        return c

    def throttled(who, method, path):
        with monkeypatch.context() as patch:
            patch.setattr(UserRateThrottle, "rate", "1/min", raising=False)
            c = client(who)
            getattr(c, method)(path)
            return getattr(c, method)(path)

    api_client.force_authenticate(user)
    schema = api_client.get("/api/schema/?format=json").json()
    tech, other, rev, norole, anon = (
        client(user),
        client(other_user),
        client(reviewer),
        client(no_role_user),
        client(),
    )

    def png(name="a.png", seed=0):
        return SimpleUploadedFile(name, cell_png(seed=seed), "image/png")

    # POST specimens/{accession}/batch/ (limits scaled down: 2 files a job, 3 files and 5 fields a request)
    settings.HEMATOVISION_BATCH_MAX_FILES = 2
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 5
    batch = "/api/v1/specimens/{}/batch/"
    taken = SpecimenFactory(accession="TAKEN", created_by=other_user)
    ClassificationFactory(owner=other_user, specimen=taken)  # not empty: bound to other_user
    signed = SpecimenFactory(accession="SIGNED", created_by=user)
    cell_review.classification_review(
        classification=ClassificationFactory(owner=user, specimen=signed),
        reviewer=reviewer,
        label="EOSINOPHIL",
    )
    signoff.specimen_sign(specimen=signed, reviewer=reviewer)
    accepted = tech.post(batch.format("B-1"), {"images": [png()]}, format="multipart")
    job = BatchJob.objects.get(specimen__accession="B-1")

    def over_job_cap():
        settings.HEMATOVISION_MAX_QUEUED_JOBS_PER_USER = 1  # B-1 is still queued
        try:
            return tech.post(batch.format("B-4"), {"images": [png("d.png", 9)]}, format="multipart")
        finally:
            settings.HEMATOVISION_MAX_QUEUED_JOBS_PER_USER = 4

    check_against_schema(
        schema,
        "/api/v1/specimens/{accession}/batch/",
        "post",
        [
            accepted,
            tech.post(batch.format("B-2"), {}, format="multipart"),
            tech.post(batch.format("TAKEN"), {"images": [png()]}, format="multipart"),
            tech.post(batch.format("SIGNED"), {"images": [png()]}, format="multipart"),
            tech.post(batch.format("bad accession!"), {"images": [png()]}, format="multipart"),
            tech.post(
                batch.format("B-2"),
                {"archive": SimpleUploadedFile("x.zip", b"not a zip")},
                format="multipart",
            ),
            tech.post(
                batch.format("B-2"), {"images": [png(f"{i}.png", i) for i in range(3)]}, format="multipart"
            ),
            tech.post(
                batch.format("B-2"), {"images": [png(f"{i}.png", i) for i in range(4)]}, format="multipart"
            ),
            tech.post(batch.format("B-2"), {f"field{i}": "x" for i in range(10)}, format="multipart"),
            anon.post(batch.format("B-2"), {"images": [png()]}, format="multipart"),
            norole.post(batch.format("B-2"), {"images": [png()]}, format="multipart"),
            client(user, csrf=True).post(batch.format("B-2"), {"images": [png()]}, format="multipart"),
            tech.post(batch.format("B-2"), {"images": "x"}, format="json"),
            tech.post(batch.format("B-2"), {"images": [png()]}, format="multipart", HTTP_ACCEPT="text/csv"),
            throttled(user, "post", batch.format("B-2")),
            tech.post(
                batch.format("B-2"), {"images": [SimpleUploadedFile("n.txt", b"hi")]}, format="multipart"
            ),
            over_job_cap(),
        ],
    )

    # GET jobs/{id}/
    job_url = f"/api/v1/jobs/{job.pk}/"
    check_against_schema(
        schema,
        "/api/v1/jobs/{id}/",
        "get",
        [
            tech.get(job_url),
            anon.get(job_url),
            other.get(job_url),
            tech.get(job_url, HTTP_ACCEPT="text/csv"),
            throttled(user, "get", job_url),
        ],
    )

    # POST jobs/{id}/rerun/: a finished job with a file that failed while running, then again (running),
    # and a finished job with nothing to retry.
    job.items.update(state=BatchItem.State.FAILED, error_code="model_unavailable", finished_at=timezone.now())
    BatchJob.objects.filter(pk=job.pk).update(
        state=BatchJob.State.DONE_WITH_ERRORS, finished_at=timezone.now()
    )
    done = job_services.job_create(user=user, accession="B-3", files=[("c.png", cell_png(seed=3))])
    BatchJob.objects.filter(pk=done.pk).update(state=BatchJob.State.DONE, finished_at=timezone.now())
    rerun = f"/api/v1/jobs/{job.pk}/rerun/"
    check_against_schema(
        schema,
        "/api/v1/jobs/{id}/rerun/",
        "post",
        [
            tech.post(rerun),
            tech.post(rerun),
            tech.post(f"/api/v1/jobs/{done.pk}/rerun/"),
            anon.post(rerun),
            other.post(rerun),
            client(user, csrf=True).post(rerun),
            tech.post(rerun, HTTP_ACCEPT="text/csv"),
            throttled(user, "post", rerun),
        ],
    )

    # POST specimens/{accession}/sign/
    sign = "/api/v1/specimens/{}/sign/"
    ready = SpecimenFactory(accession="S-OK", created_by=user)
    cell_review.classification_review(
        classification=ClassificationFactory(owner=user, specimen=ready), reviewer=reviewer, label="MONOCYTE"
    )
    ClassificationFactory(owner=user, specimen=SpecimenFactory(accession="S-NO", created_by=user))
    SpecimenFactory(accession="S-EMPTY", created_by=user)
    check_against_schema(
        schema,
        "/api/v1/specimens/{accession}/sign/",
        "post",
        [
            rev.post(sign.format("S-OK")),
            rev.post(sign.format("S-OK")),
            rev.post(sign.format("S-NO")),
            rev.post(sign.format("S-EMPTY")),
            anon.post(sign.format("S-NO")),
            tech.post(sign.format("S-NO")),
            rev.post(sign.format("NOPE")),
            rev.post(sign.format("S-NO"), HTTP_ACCEPT="text/csv"),
            throttled(reviewer, "post", sign.format("S-NO")),
        ],
    )

    # GET specimens/{accession}/report.pdf and report.csv (errors are JSON even when the file type is asked)
    for name, media_type in (("report.pdf", "application/pdf"), ("report.csv", "text/csv")):
        url = f"/api/v1/specimens/{{}}/{name}"
        check_against_schema(
            schema,
            f"/api/v1/specimens/{{accession}}/{name}",
            "get",
            [
                tech.get(url.format("S-OK"), HTTP_ACCEPT=media_type),
                anon.get(url.format("S-OK"), HTTP_ACCEPT=media_type),
                other.get(url.format("S-OK"), HTTP_ACCEPT=media_type),
                tech.get(url.format("NOPE"), HTTP_ACCEPT=media_type),
                tech.get(url.format("S-OK"), HTTP_ACCEPT="text/html"),
                throttled(user, "get", url.format("S-OK")),
            ],
        )
