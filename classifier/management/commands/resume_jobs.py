"""Pick up work a restart or an outage cut short (run at start-up on the embedded profile).

Files that a crashed batch staging left (no row refers to them) are removed first;
then uploads spooled while the database was unavailable are classified, then
images stored as pending while the model was unavailable, then unfinished batch
jobs resume.
"""

from django.conf import settings
from django.core.management.base import BaseCommand

from classifier import staging
from classifier.cells import services as cell_services
from classifier.jobs import runner, tasks
from classifier.models import BatchJob


class Command(BaseCommand):
    help = (
        "Resume unfinished batch jobs: queue them on Celery when CELERY_BROKER_URL is set, "
        "otherwise run them here, one after the other. Safe to run at any time."
    )

    def handle(self, *args, **options):
        swept = staging.sweep_crashed_stagings()
        if swept:
            self.stdout.write(f"removed {len(swept)} file(s) left by a crashed batch staging")
        stored = cell_services.classification_finish_stored()
        self.stdout.write(f"classified {stored['spooled']} spooled upload(s)")
        self.stdout.write(f"classified {stored['pending']} pending image(s)")
        if settings.CELERY_BROKER_URL:
            ids = tasks.job_resume_unfinished()
            self.stdout.write(f"queued {len(ids)} unfinished job(s): {ids}")
            return
        pending = BatchJob.objects.exclude(
            state__in=[BatchJob.State.DONE, BatchJob.State.DONE_WITH_ERRORS]
        ).order_by("created_at", "id")
        ids = list(pending.values_list("pk", flat=True))
        for job_id in ids:
            job = runner.job_run(job_id=job_id)
            self.stdout.write(f"job {job.pk} ({job.specimen.accession}): {job.state}")
        self.stdout.write(f"resumed {len(ids)} unfinished job(s)")
