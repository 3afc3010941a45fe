"""Batch jobs: staging files and ZIPs safely, running, failing part-way, re-running without duplicates."""

from collections import Counter

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import call_command

from classifier.cells import services as cell_services
from classifier.jobs import runner, tasks
from classifier.jobs import selectors as job_selectors
from classifier.jobs import services as job_services
from classifier.models import BatchItem, BatchJob, Classification, Specimen
from classifier.tests.specimen_helpers import (
    cell_png,
    make_zip,
    media_files,
    sync_jobs,  # noqa: F401
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sync_jobs")]


def _items(job):
    return [(i.position, i.filename, i.state, i.error_code) for i in job.items.order_by("position")]


def test_job_from_files_classifies_each_once(user, settings, django_capture_on_commit_callbacks):
    files = [
        ("e.png", cell_png("EOSINOPHIL", 1)),
        ("l.png", cell_png("LYMPHOCYTE", 2)),
        ("m.png", cell_png("MONOCYTE", 3)),
        ("again.png", cell_png("EOSINOPHIL", 1)),
        ("notes.txt", b"hello"),
    ]
    with django_capture_on_commit_callbacks(execute=True):
        job = job_services.job_create(user=user, accession="ACC-1", files=files)
    job.refresh_from_db()
    assert job.state == BatchJob.State.DONE_WITH_ERRORS
    assert job.runs == 1
    assert job.started_at
    assert job.finished_at
    assert _items(job) == [
        (1, "e.png", "done", ""),
        (2, "l.png", "done", ""),
        (3, "m.png", "done", ""),
        (4, "again.png", "skipped", "duplicate"),
        (5, "notes.txt", "failed", "not_an_image"),
    ]
    cells = Classification.objects.filter(specimen__accession="ACC-1")
    assert sorted(cells.values_list("predicted_label", flat=True)) == ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE"]
    assert all(c.owner == user for c in cells)
    assert job.items.get(position=4).error_message == "Same image as file 1 (e.png)."
    # Staged copies are removed once each file is classified; the classification keeps its own.
    assert media_files(settings, "batches") == []
    progress = job_selectors.job_progress(job=job)
    assert progress["counts"] == {"pending": 0, "done": 3, "failed": 1, "skipped": 1}
    assert (progress["total"], progress["processed"], progress["percent"], progress["finished"]) == (
        5,
        5,
        100.0,
        True,
    )
    assert progress["items"][0] == {
        "position": 1,
        "filename": "e.png",
        "state": "done",
        "error_code": None,
        "error": None,
        "classification_id": job.items.get(position=1).classification_id,
        "status": "classified",
        "label": "EOSINOPHIL",
        "already_in_specimen": False,
    }
    assert progress["items"][4]["error"].startswith("Not an image file")


def test_zip_entries_are_read_safely(user, settings, django_capture_on_commit_callbacks):
    settings.HEMATOVISION_MAX_UPLOAD_BYTES = 20_000
    big = cell_png("MONOCYTE", 9, size=(300, 300))
    assert len(big) > 20_000
    archive = make_zip(
        {
            "folder/": b"",
            "folder/a.png": cell_png("EOSINOPHIL", 1),
            "../evil.png": cell_png("EOSINOPHIL", 2),
            "/abs.png": cell_png("EOSINOPHIL", 3),
            "readme.txt": b"not an image",
            "__MACOSX/folder/._a.png": b"resource fork",
            "big.png": big,
            "fake.jpg": b"this is not a jpeg",
            "b.PNG": cell_png("LYMPHOCYTE", 4),
        }
    )
    with django_capture_on_commit_callbacks(execute=True):
        job = job_services.job_create(user=user, accession="ZIP-1", archive=archive)
    job.refresh_from_db()
    assert _items(job) == [
        (1, "a.png", "done", ""),
        (2, "evil.png", "failed", "unsafe_path"),
        (3, "abs.png", "failed", "unsafe_path"),
        (4, "readme.txt", "failed", "not_an_image"),
        (5, "big.png", "failed", "file_too_large"),
        (6, "fake.jpg", "failed", "not_an_image"),
        (7, "b.PNG", "done", ""),
    ]
    assert (
        job.items.get(position=6).error_message
        == "fake.jpg is not an image that can be read (JPEG, PNG, TIFF, BMP or WebP)."
    )
    assert Classification.objects.filter(specimen__accession="ZIP-1").count() == 2


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (lambda: make_zip({}), "The upload holds no files."),
        (lambda: _named(b"PK\x03\x04 broken"), "The archive is not a readable ZIP file."),
    ],
)
def test_bad_archive_is_refused_and_leaves_nothing(user, settings, archive, message):
    with pytest.raises(ValidationError) as info:
        job_services.job_create(user=user, accession="BAD-1", archive=archive())
    assert info.value.messages == [message]
    assert not BatchJob.objects.exists()
    assert not Specimen.objects.exists()
    assert media_files(settings, "batches") == []


def _named(data: bytes):
    import io

    buffer = io.BytesIO(data)
    buffer.name = "x.zip"
    return buffer


@pytest.mark.parametrize("as_upload", [False, True], ids=["file_object", "oversize_upload"])
def test_archive_over_the_archive_limit_is_refused_by_its_size(user, settings, as_upload):
    """Not "not a readable ZIP": the upload handler keeps no content of such a file, only its size."""
    from classifier.cells.validation import ImageRejected
    from classifier.uploads import OversizeUpload

    settings.HEMATOVISION_MAX_UPLOAD_BYTES = 20_000
    settings.HEMATOVISION_BATCH_MAX_ARCHIVE_MB = 1
    size = 1536 * 1024
    if as_upload:
        archive = OversizeUpload("big.zip", "application/zip", size)
    else:
        archive = _named(b"PK" + b"\0" * (size - 2))
    with pytest.raises(ImageRejected) as info:
        job_services.job_create(user=user, accession="BIG-ZIP", archive=archive)
    assert (info.value.code, info.value.http_status, info.value.message) == (
        "file_too_large",
        413,
        "The archive is 1.5 MB; the limit is 1.0 MB.",
    )
    assert not BatchJob.objects.exists()
    assert not Specimen.objects.exists()
    assert media_files(settings, "batches") == []


def test_archive_bigger_than_the_image_limit_is_read(user, settings):
    settings.HEMATOVISION_MAX_UPLOAD_BYTES = 20_000
    settings.HEMATOVISION_BATCH_MAX_ARCHIVE_MB = 1
    archive = make_zip({f"{i}.png": cell_png("EOSINOPHIL", i, size=(96, 72)) for i in range(3)})
    assert 20_000 < len(archive.getvalue()) < 1024 * 1024
    job = job_services.job_create(user=user, accession="MID-ZIP", archive=archive)
    assert [(i.filename, i.state) for i in job.items.order_by("position")] == [
        ("0.png", "pending"),
        ("1.png", "pending"),
        ("2.png", "pending"),
    ]


def test_too_many_files_refused(user, settings):
    settings.HEMATOVISION_BATCH_MAX_FILES = 2
    archive = make_zip({f"{i}.png": cell_png("EOSINOPHIL", i) for i in range(3)})
    with pytest.raises(ValidationError) as info:
        job_services.job_create(user=user, accession="MANY", archive=archive)
    assert info.value.messages == ["The archive holds 3 files; the limit is 2 per job."]
    with pytest.raises(ValidationError):
        job_services.job_create(
            user=user, accession="MANY", files=[(f"{i}.png", cell_png("EOSINOPHIL", i)) for i in range(3)]
        )
    assert not BatchJob.objects.exists()
    assert media_files(settings, "batches") == []


def test_signed_specimen_and_other_users_accession_refused(user, other_user, reviewer, settings):
    specimen = Specimen.objects.create(accession="SIGNED", created_by=user)
    cell_services.classification_create(user=other_user, data=cell_png("MONOCYTE", 7), accession="THEIRS")
    from django.utils import timezone

    Specimen.objects.filter(pk=specimen.pk).update(signed_by=reviewer, signed_at=timezone.now())
    refusal = r"Specimen SIGNED is signed; to add images a reviewer opens an amendment \(POST /api/v1/"
    with pytest.raises(ValidationError, match=refusal):
        job_services.job_create(user=user, accession="SIGNED", files=[("a.png", cell_png())])
    with pytest.raises(ValidationError, match="cannot be added to accession THEIRS from your account"):
        job_services.job_create(user=user, accession="THEIRS", files=[("a.png", cell_png())])
    assert not BatchJob.objects.exists()
    assert media_files(settings, "batches") == []
    assert not any((settings.MEDIA_ROOT / "staging").iterdir())  # no staging lock is left behind


def test_no_role_user_cannot_create_and_jobs_are_private(no_role_user, user, other_user, reviewer):
    with pytest.raises(PermissionDenied):
        job_services.job_create(user=no_role_user, accession="X1", files=[("a.png", cell_png())])
    job = job_services.job_create(user=user, accession="MINE", files=[("a.png", cell_png())])
    assert job_selectors.job_get(user=user, pk=job.pk) == job
    assert job_selectors.job_get(user=reviewer, pk=job.pk) == job
    with pytest.raises(BatchJob.DoesNotExist):
        job_selectors.job_get(user=other_user, pk=job.pk)
    assert list(job_selectors.job_list(user=no_role_user)) == []


def test_failure_part_way_keeps_results_and_rerun_does_not_duplicate(
    user, monkeypatch, django_capture_on_commit_callbacks, caplog
):
    files = [(f"{i}.png", cell_png("LYMPHOCYTE", i)) for i in range(6)]
    real_create = cell_services.classification_get_or_create

    def flaky(**kwargs):
        if kwargs["filename"] == "3.png":
            raise RuntimeError("storage hiccup")
        return real_create(**kwargs)

    monkeypatch.setattr(cell_services, "classification_get_or_create", flaky)
    with django_capture_on_commit_callbacks(execute=True):
        job = job_services.job_create(user=user, accession="PART", files=files)
    job.refresh_from_db()
    assert job.state == BatchJob.State.DONE_WITH_ERRORS
    failed = job.items.get(position=4)
    assert (failed.state, failed.error_code, failed.error_message) == (
        "failed",
        "internal_error",
        f"Unexpected server error (logged as job {job.pk}, item {failed.pk}); retry the failed files, "
        "and tell the administrator if it happens again.",
    )
    assert "storage hiccup" in caplog.text
    assert "storage hiccup" not in failed.error_message
    assert failed.source  # kept so the file can be retried
    assert Classification.objects.count() == 5

    monkeypatch.setattr(cell_services, "classification_get_or_create", real_create)
    with django_capture_on_commit_callbacks(execute=True):
        job_services.job_rerun(job=job, user=user)
    job.refresh_from_db()
    assert job.state == BatchJob.State.DONE
    assert job.runs == 2
    assert Classification.objects.count() == 6
    assert sorted(Classification.objects.values_list("original_filename", flat=True)) == [
        f"{i}.png" for i in range(6)
    ]
    with pytest.raises(ValidationError, match="No failed file can be retried."):
        job_services.job_rerun(job=job, user=user)


class Killed(BaseException):
    """Stands in for a worker killed mid-job (not an Exception: nothing catches it)."""


def test_killed_mid_job_resumes_without_duplicates(user, monkeypatch):
    files = [(f"{i}.png", cell_png("MONOCYTE", i)) for i in range(8)]
    job = job_services.job_create(user=user, accession="KILL", files=files, enqueue=False)
    real_create = cell_services.classification_get_or_create
    calls = Counter()

    def dies_on_fourth(**kwargs):
        calls["n"] += 1
        result = real_create(**kwargs)
        if calls["n"] == 4:
            raise Killed  # the classification is stored, but the item is not marked done
        return result

    monkeypatch.setattr(cell_services, "classification_get_or_create", dies_on_fourth)
    with pytest.raises(Killed):
        runner.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == BatchJob.State.RUNNING
    assert job.items.filter(state=BatchItem.State.DONE).count() == 3
    assert Classification.objects.count() == 4

    monkeypatch.setattr(cell_services, "classification_get_or_create", real_create)
    assert tasks.job_resume_unfinished() == [job.pk]  # sync mode: runs right away
    job.refresh_from_db()
    assert job.state == BatchJob.State.DONE
    assert job.runs == 2
    assert Classification.objects.count() == 8
    ids = list(job.items.values_list("classification_id", flat=True))
    assert len(set(ids)) == 8
    assert None not in ids
    runner.job_run(job_id=job.pk)  # a redelivered message finds nothing to do
    assert Classification.objects.count() == 8


def test_same_folder_twice_adds_nothing(user, tmp_path, capsys):
    folder = tmp_path / "share"
    folder.mkdir()
    for i, label in enumerate(["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE"]):
        (folder / f"{label.lower()}.png").write_bytes(cell_png(label, i))
    (folder / "Thumbs.db").write_bytes(b"junk")
    call_command("classify_folder", str(folder), accession="SHARE-1", user="tech")
    first = capsys.readouterr().out
    assert "eosinophil.png: EOSINOPHIL" in first
    assert "Thumbs.db: FAILED: Not an image file" in first
    assert first.strip().endswith("done_with_errors; 3 done, 1 failed, 0 skipped")
    call_command("classify_folder", str(folder), accession="SHARE-1", user="tech")
    second = capsys.readouterr().out
    assert "lymphocyte.png: LYMPHOCYTE (already in specimen)" in second
    assert Classification.objects.filter(specimen__accession="SHARE-1").count() == 3
    assert BatchJob.objects.count() == 2


def test_classify_folder_errors(user, tmp_path):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="is not a folder"):
        call_command("classify_folder", str(tmp_path / "nope"), accession="A", user="tech")
    with pytest.raises(CommandError, match="No active user 'ghost'"):
        call_command("classify_folder", str(tmp_path), accession="A", user="ghost")
    with pytest.raises(CommandError, match="holds no files"):
        call_command("classify_folder", str(tmp_path), accession="A", user="tech")


def test_resume_jobs_command_runs_unfinished(user, capsys):
    job = job_services.job_create(user=user, accession="RES", files=[("a.png", cell_png())], enqueue=False)
    call_command("resume_jobs")
    out = capsys.readouterr().out
    assert f"job {job.pk} (RES): done" in out
    assert "resumed 1 unfinished job(s)" in out
    call_command("resume_jobs")
    assert "resumed 0 unfinished job(s)" in capsys.readouterr().out


def test_enqueue_uses_celery_when_a_broker_is_set(settings, monkeypatch):
    sent = []
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    monkeypatch.setattr(tasks.run_batch_job, "delay", lambda job_id: sent.append(job_id))
    tasks.enqueue_job(41)
    assert sent == [41]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_in_process_thread_runs_the_job(user, settings):
    """The embedded profile (no broker): the job runs in a background thread after commit."""
    import time

    settings.CELERY_BROKER_URL = ""
    settings.HEMATOVISION_JOBS_IN_THREAD = True
    files = [(f"{i}.png", cell_png("EOSINOPHIL", i)) for i in range(3)]
    job = job_services.job_create(user=user, accession="THREAD", files=files)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.is_finished:
            break
        time.sleep(0.1)
    assert job.state == BatchJob.State.DONE
    assert Classification.objects.filter(specimen__accession="THREAD").count() == 3
