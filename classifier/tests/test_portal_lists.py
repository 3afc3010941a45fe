"""Lists and exports a lab uses every day: pagination, counts, date errors, times in the lab's zone."""

import csv
import datetime
import io

import pytest
from django.urls import reverse
from django.utils import timezone

from classifier.models import BatchJob, Classification, ReviewState, Specimen
from classifier.tests.factories import ClassificationFactory, SpecimenFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("page", ["999", "abc", "0"])
def test_specimen_list_answers_a_bad_page_number_with_a_real_page(tech_client, user, page):
    for _ in range(30):
        SpecimenFactory(created_by=user)
    response = tech_client.get(reverse("specimen-list"), {"page": page})
    assert response.status_code == 200
    expected = 1 if page in ("abc",) else 2  # malformed: the first page; out of range: the last
    assert response.context["page_obj"].number == expected


def test_job_list_is_paged_not_cut(tech_client, user):
    specimen = SpecimenFactory(created_by=user)
    jobs = BatchJob.objects.bulk_create(BatchJob(specimen=specimen, created_by=user) for _ in range(105))
    first = tech_client.get(reverse("job-list"))
    assert len(first.context["jobs"]) == 50
    html = first.content.decode()
    assert "Page 1 of 3" in html
    assert 'href="?page=2"' in html
    last = tech_client.get(reverse("job-list"), {"page": 3})
    oldest = sorted(job.pk for job in jobs)[:5]
    assert sorted(job.pk for job in last.context["jobs"]) == oldest


def test_dashboard_queue_figure_matches_what_each_role_has_to_wait_for(client, user, reviewer):
    for _ in range(3):
        ClassificationFactory(owner=user)
    ClassificationFactory(owner=user, review_state=ReviewState.CONFIRMED, final_label="EOSINOPHIL")
    ClassificationFactory(owner=user, review_state=ReviewState.SIGNED, final_label="EOSINOPHIL")
    client.force_login(user)  # a technologist: their results still waiting for a reviewer
    html = client.get(reverse("dashboard")).content.decode()
    assert 'Awaiting review</div><div class="display-6" id="stat-queue">3</div>' in html
    client.force_login(reviewer)  # a reviewer: the cells awaiting review (reviewed ones wait for sign-off)
    html = client.get(reverse("dashboard")).content.decode()
    assert 'id="stat-queue"><a href="/review/" class="text-decoration-none">3</a>' in html
    assert "3 cells awaiting review" in client.get(reverse("review-queue")).content.decode()


def test_specimen_export_date_error_shows_the_list_with_the_dates_kept(tech_client, user):
    SpecimenFactory(created_by=user, accession="S-77")
    response = tech_client.get(reverse("specimen-export"), {"start": "2020-02-01", "end": "2020-01-01"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "The start date is after the end date." in html
    assert 'value="2020-02-01"' in html
    assert 'value="2020-01-01"' in html
    assert "S-77" in html  # the list itself, not an empty error page


def test_csv_exports_write_times_in_the_lab_time_zone(tech_client, user, settings):
    settings.TIME_ZONE = "Europe/Berlin"
    received = datetime.datetime(2026, 2, 28, 23, 30, tzinfo=datetime.UTC)  # 1 March 00:30 in Berlin
    specimen = SpecimenFactory(created_by=user, accession="TZ-1")
    Specimen.objects.filter(pk=specimen.pk).update(created_at=received)
    cell = ClassificationFactory(owner=user, specimen=specimen)
    Classification.objects.filter(pk=cell.pk).update(created_at=received)
    export = tech_client.get(reverse("specimen-export"), {"start": "2026-03-01", "end": "2026-03-01"})
    rows = list(csv.reader(io.StringIO(export.content.decode())))
    assert rows[1][:2] == ["TZ-1", "2026-03-01T00:30:00+01:00"]
    report = tech_client.get(reverse("specimen-report-csv", args=["TZ-1"])).content.decode()
    cells = list(csv.DictReader(io.StringIO(report)))
    assert cells[0]["created_at"] == "2026-03-01T00:30:00+01:00"
    history = b"".join(tech_client.get(reverse("classification-export")).streaming_content).decode()
    assert list(csv.DictReader(io.StringIO(history)))[0]["created_at"] == "2026-03-01T00:30:00+01:00"
    assert timezone.localtime(received).date() == datetime.date(2026, 3, 1)
