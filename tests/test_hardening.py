"""Issue 18, the second hardening round: one regression test per finding (in-process part).

The concurrency tests (findings 2 and 6), the peak-memory test under 20 concurrent hostile uploads
(finding 3), the database-lock retry (finding 4) and the kill test (finding 5) run against a real
server process in ``tests/test_hardening_live.py``.
"""

import io
import threading
import time
from unittest import mock

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.uploadhandler import MemoryFileUploadHandler, TemporaryFileUploadHandler
from django.db import OperationalError
from django.test import Client
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from classifier import limits
from classifier.cells import services as cell_services
from classifier.cells.validation import ImageRejected, check_image, decoded_bytes
from classifier.jobs import services as job_services
from classifier.jobs import tasks
from classifier.models import BatchJob, Classification, Specimen
from classifier.specimens import report_csv, report_pdf
from classifier.tests.factories import image_bytes
from classifier.tests.pdf_helpers import pdf_text
from classifier.tests.specimen_helpers import cell_png

pytestmark = pytest.mark.django_db

MB = 1024 * 1024


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def post_image(client, data, name="cell.png", **fields):
    return client.post(
        "/api/v1/classifications/", {"image": SimpleUploadedFile(name, data), **fields}, format="multipart"
    )


def post_batch(client, accession, files):
    return client.post(
        f"/api/v1/specimens/{accession}/batch/",
        {"images": [SimpleUploadedFile(name, data) for name, data in files]},
        format="multipart",
    )


# -------------------------------------------------------------- 1: accession squatting


def test_failed_upload_opens_no_specimen_and_an_empty_one_goes_to_the_first_real_upload(
    user, other_user, reviewer
):
    """Finding 1: B's batch of one text file used to open ACC-2026-0300 for B (202), after which A,
    whose order it is, was refused and B read every cell a reviewer added."""
    tech_a, tech_b = token_client(user), token_client(other_user)
    squat = post_batch(tech_b, "ACC-2026-0300", [("notes.txt", b"hello")])
    assert squat.status_code == 400
    assert squat.json()["code"] == "no_usable_files"
    assert not Specimen.objects.exists()
    assert not BatchJob.objects.exists()

    # A specimen that holds nothing (a batch whose only file failed when it ran) binds no one:
    Specimen.objects.create(accession="ACC-2026-0301", created_by=other_user)
    created = post_image(tech_a, cell_png("EOSINOPHIL", 1), accession="acc-2026-0301")
    assert created.status_code == 201
    specimen = Specimen.objects.get(accession="ACC-2026-0301")
    assert specimen.created_by == user
    cell = created.json()["id"]
    for path in ("/api/v1/specimens/ACC-2026-0301/", f"/api/v1/classifications/{cell}/",
                 f"/api/v1/classifications/{cell}/image/", "/api/v1/specimens/ACC-2026-0301/fhir/",
                 "/api/v1/specimens/ACC-2026-0301/report.pdf"):
        assert tech_b.get(path).status_code == 404, path
        assert tech_a.get(path).status_code == 200, path

    # B is refused without learning the stored spelling, the owner or the state.
    refused = post_image(tech_b, cell_png("LYMPHOCYTE", 2), accession="Acc-2026-0301")
    assert refused.status_code == 400
    assert refused.json() == {
        "detail": "Images cannot be added to accession Acc-2026-0301 from your account; ask a reviewer "
        "to add them, or to assign the specimen to you.",
        "code": "accession_taken",
    }

    # A reviewer can give the specimen to another technologist; only the new owner sees it then.
    assert token_client(user).post(
        "/api/v1/specimens/ACC-2026-0301/owner/", {"username": "tech2"}, format="json"
    ).status_code == 403
    moved = token_client(reviewer).post(
        "/api/v1/specimens/ACC-2026-0301/owner/", {"username": "tech2"}, format="json"
    )
    assert moved.status_code == 200
    assert moved.json() == {"accession": "ACC-2026-0301", "owner": "tech2"}
    assert tech_b.get("/api/v1/specimens/ACC-2026-0301/").status_code == 200
    assert tech_a.get("/api/v1/specimens/ACC-2026-0301/").status_code == 404


# -------------------------------------------------------------- 2 and 6: the decision inside the lock


def test_a_retry_that_lost_the_race_is_judged_like_a_sequential_one(user, monkeypatch):
    """Finding 2 (service level; the live test sends them at once): the IntegrityError branch returned
    the winning row without the conflict check, so another image under the same id got its result."""
    first, created = cell_services.classification_get_or_create(
        user=user, data=cell_png("EOSINOPHIL", 1), external_id="RACE-A"
    )
    assert created
    # Make the early check miss the committed row, as when both requests passed it at once.
    real_filter = Classification.objects.filter

    def blind(*args, **kwargs):
        qs = real_filter(*args, **kwargs)
        return qs.none() if kwargs.get("external_id") == "RACE-A" and "owner" in kwargs else qs

    with mock.patch.object(Classification.objects, "filter", side_effect=blind):
        with pytest.raises(ValidationError) as info:
            cell_services.classification_get_or_create(
                user=user, data=cell_png("LYMPHOCYTE", 2), external_id="RACE-A"
            )
        assert info.value.code == "external_id_conflict"
        again, created = cell_services.classification_get_or_create(
            user=user, data=cell_png("EOSINOPHIL", 1), external_id="RACE-A"
        )
    assert (again.pk, created) == (first.pk, False)
    assert Classification.objects.count() == 1


# -------------------------------------------------------------- 3: memory bounded by design


def _png(mode, size, value=0) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def test_decoded_size_is_estimated_from_the_header_and_refused_before_decoding(settings):
    """Finding 3: a 92 KB 16-bit PNG of 6300x6300 took +980 MB; it is now refused from its header."""
    assert decoded_bytes("I;16", 6300, 6300) == 6300 * 6300 * 2
    assert decoded_bytes("RGB", 100, 100) == 100 * 100 * 4  # Pillow keeps RGB in 4 bytes a pixel
    assert decoded_bytes("F", 10, 10) == 400
    hostile = _png("I;16", (6300, 6300))
    assert len(hostile) < 200_000
    with mock.patch("PIL.ImageFile.ImageFile.load", side_effect=AssertionError("decoded")):
        with pytest.raises(ImageRejected) as info:
            check_image(hostile)
    assert (info.value.code, info.value.http_status) == ("image_too_large", 413)
    assert info.value.message == (
        "The image is 6300x6300 pixels in I;16 mode and would take 75.7 MB of memory to decode; the limit "
        "is 64.0 MB. Send a smaller or 8-bit image."
    )
    settings.HEMATOVISION_MAX_DECODED_MB = 200
    assert check_image(hostile).image.mode == "L"  # under a larger budget it is still accepted


def test_image_work_is_bounded_per_process(settings):
    """Finding 3: concurrent decodes and inferences are limited per process (re-entrant per thread)."""
    settings.HEMATOVISION_IMAGE_WORKERS = 2
    inside, peak, lock = [0], [0], threading.Lock()

    def work():
        with limits.image_work(), limits.image_work():  # a field's cells re-enter their field's slot
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert peak[0] == 2

    settings.HEMATOVISION_IMAGE_WORK_WAIT_SECONDS = 0.05
    settings.HEMATOVISION_IMAGE_WORKERS = 1
    held = threading.Event()
    release = threading.Event()

    def hold():
        with limits.image_work():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        response = post_image(token_client_for_busy(), cell_png("EOSINOPHIL", 3))
    finally:
        release.set()
        holder.join(10)
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["code"] == "server_busy"
    assert not Classification.objects.exists()


def token_client_for_busy():
    from accounts.roles import TECHNOLOGIST
    from accounts.tests.factories import UserFactory

    return token_client(UserFactory(username="busy", roles=[TECHNOLOGIST]))


def test_batch_jobs_run_on_a_bounded_pool(user, settings, monkeypatch):
    """Finding 3: each batch job had its own thread (8 posts: 8 decoders at once, 5.2 GB)."""
    settings.CELERY_BROKER_URL = ""
    settings.HEMATOVISION_JOBS_IN_THREAD = True
    running, peak, lock, done = [0], [0], threading.Lock(), threading.Semaphore(0)

    def fake_run(job_id):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        done.release()

    monkeypatch.setattr(tasks, "_run_in_thread", fake_run)
    for job_id in range(6):
        tasks.enqueue_job(job_id)
    for _ in range(6):
        assert done.acquire(timeout=30)
    assert peak[0] == settings.HEMATOVISION_JOB_WORKERS == 1


def test_batch_endpoint_is_throttled_and_capped_per_user(user, settings):
    """Finding 3: 130 batch posts in 12 s were all 202 while single uploads got 429 after 120."""
    settings.HEMATOVISION_MAX_QUEUED_JOBS_PER_USER = 2
    client = token_client(user)
    answers = [post_batch(client, f"CAP-{i}", [("a.png", cell_png("EOSINOPHIL", i))]) for i in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 429]  # jobs stay queued: no commit here
    assert answers[2].json() == {
        "detail": "You have 2 batch jobs waiting or running; the limit is 2. Send this one when one of "
        "them has finished.",
        "code": "too_many_jobs",
    }
    assert not Specimen.objects.filter(accession="CAP-2").exists()

    from classifier.api.throttling import UploadRateThrottle

    BatchJob.objects.update(state=BatchJob.State.DONE)
    with mock.patch.object(UploadRateThrottle, "rate", "6/min", create=True):  # the 3 posts above count
        statuses = [post_batch(client, f"RATE-{i}", [("a.png", cell_png("MONOCYTE", i))]).status_code
                    for i in range(2)]
        single = post_image(client, cell_png("LYMPHOCYTE", 9)).status_code  # one upload rate for both
        over = post_batch(client, "RATE-X", [("a.png", cell_png("MONOCYTE", 8))])
    assert statuses == [202, 202]
    assert single == 201
    assert over.status_code == 429
    assert over.json()["code"] == "throttled"


# -------------------------------------------------------------- 4: a resend of a kept upload


def test_a_resend_of_a_kept_upload_finds_it_instead_of_storing_it_twice(user, monkeypatch, settings):
    """Finding 4: an upload kept during a database outage, sent again by the user, gave two rows."""
    client = token_client(user)
    data = cell_png("MONOCYTE", 5)
    real_save = Classification.save

    def locked(self, *args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(Classification, "save", locked)
    first = post_image(client, data, accession="KEPT-1")
    again = post_image(client, data, accession="KEPT-1")  # the database is still away
    assert first.status_code == again.status_code == 503
    assert first.json()["reference"] == again.json()["reference"]
    spool = settings.MEDIA_ROOT / "spool"
    assert len(list(spool.glob("*.bin"))) == 1

    monkeypatch.setattr(Classification, "save", real_save)
    filed = post_image(client, data, accession="KEPT-1")  # back: the resend files the kept upload
    assert filed.status_code == 200
    later = post_image(client, data, accession="kept-1")
    assert later.status_code == 200
    assert later.json()["id"] == filed.json()["id"]
    assert Classification.objects.filter(image_sha256=cell_services.sha256_of(data)).count() == 1
    assert not list(spool.glob("*.bin"))


# -------------------------------------------------------------- 7: password reset cannot be silenced


def test_nobody_can_use_up_the_owners_password_resets(client, user, password, settings):
    """Finding 7: five requests for a colleague's address from another client silenced the owner."""
    settings.HEMATOVISION_PASSWORD_RESETS_PER_HOUR = 5
    owner = Client()  # the owner's browser: it has signed in here before
    assert owner.post("/accounts/login/", {"username": "tech", "password": password}).status_code == 302
    owner.post("/accounts/logout/")
    attacker = Client()  # same address (loopback, one NAT): only a browser cookie tells them apart
    for _ in range(6):
        attacker.post("/accounts/password_reset/", {"email": user.email})
    assert len(mail.outbox) == 5
    mail.outbox.clear()
    assert owner.post("/accounts/password_reset/", {"email": user.email}).status_code == 302
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == [user.email]
    forged = Client()
    forged.cookies["hv_device"] = str(user.pk)  # unsigned: not the owner's
    forged.post("/accounts/password_reset/", {"email": user.email})
    assert len(mail.outbox) == 1


# -------------------------------------------------------------- 8: anonymous bodies are not spooled


def test_anonymous_multipart_body_keeps_no_file(db):
    """Finding 8: a cookie-less POST to the sign-in page had its 18 MB files written to disk."""
    calls = []
    with (
        mock.patch.object(
            TemporaryFileUploadHandler, "new_file", side_effect=lambda *a, **k: calls.append("tmp")
        ),
        mock.patch.object(MemoryFileUploadHandler, "receive_data_chunk",
                          side_effect=lambda *a, **k: calls.append("memory")),
    ):
        for client in (Client(), Client(enforce_csrf_checks=True)):
            files = {
                "a": SimpleUploadedFile("a.bin", b"x" * (6 * MB)), "b": SimpleUploadedFile("b.bin", b"y" * MB)
            }
            response = client.post("/accounts/login/", {"username": "x", "password": "y", **files})
            assert response.status_code in (200, 403)
    assert calls == []


def test_signed_in_uploads_still_parse(tech_client):
    image = SimpleUploadedFile("c.png", cell_png("EOSINOPHIL", 4))
    response = tech_client.post("/upload/", {"images": image})
    assert response.status_code == 302
    assert Classification.objects.count() == 1


# -------------------------------------------------------------- also seen


def test_api_urls_that_match_nothing_answer_json_404(tech_api, api_client):
    for client in (tech_api, api_client):
        response = client.get("/api/v1/no-such-thing/")
        assert response.status_code == 404
        assert response["Content-Type"] == "application/json"
        assert response.json() == {"detail": "Not found.", "code": "not_found"}
    assert "text/html" in Client().get("/no-such-page/")["Content-Type"]


def test_lab_name_is_text_in_the_pdf_not_markup(user, settings):
    settings.HEMATOVISION_LAB_NAME = "St. Mary's <Haematology> & <b>Co"
    specimen = cell_services.classification_create(user=user, data=cell_png(), accession="PDF-1").specimen
    pdf = report_pdf.specimen_report_pdf(specimen=specimen)  # was: ValueError from ReportLab's parser
    assert pdf.startswith(b"%PDF-")
    assert "St. Mary's <Haematology> & <b>Co" in pdf_text(pdf)


def test_csv_cells_with_formula_characters_anywhere_are_quoted_and_defused(user, tech_client):
    cell_services.classification_create(user=user, data=cell_png(), filename="x;=1+1.png", accession="CSV-1")
    history = b"".join(tech_client.get("/classifications/export.csv").streaming_content).decode()
    assert "\"x;'=1+1.png\"" in history
    assert ";=1+1" not in history
    specimen = Specimen.objects.get()
    for text in (report_csv.specimen_report_csv(specimen=specimen), report_csv.specimens_csv(
            specimens=Specimen.objects.all())):
        assert all(line.startswith('"') for line in text.splitlines() if line)
    assert "\"x;'=1+1.png\"" in report_csv.specimen_report_csv(specimen=specimen)


def test_jobs_module_rejects_unusable_batches_before_opening_anything(user):
    with pytest.raises(ValidationError) as info:
        job_services.job_create(user=user, accession="NOPE-1", files=[("big.png", _png("RGB", (6300, 6300)))])
    assert info.value.code == "no_usable_files"
    assert "would take" in info.value.messages[0]
    assert not Specimen.objects.exists()


def test_image_bytes_helper_still_round_trips():
    assert check_image(image_bytes()).width == 64
