"""Background entry points for batch jobs: a Celery task, or a thread when no broker is set.

``enqueue_job`` is called from ``transaction.on_commit`` (see ``job_services.job_create``),
so a worker never looks for a job that is not committed yet. With
``CELERY_BROKER_URL`` set the job goes to the queue (acks late: a worker
killed mid-job leaves the message to be redelivered; Celery's concurrency
bounds how many run); without it the job waits for this process's bounded pool
of HEMATOVISION_JOB_WORKERS threads (one by default; ``HEMATOVISION_JOBS_IN_THREAD``,
on by default) or, when that is off, runs right away in the caller. However
many jobs are sent, a process runs only that many at once; each user may have
at most HEMATOVISION_MAX_QUEUED_JOBS_PER_USER unfinished (``job_services.job_create``).

Restarts: a Celery worker re-queues every unfinished job when it starts
(``worker_ready``), and queues ``finish_stored_uploads`` for images kept as
pending or spooled; on the embedded profile ``manage.py resume_jobs`` does
both. Running a job twice is safe (see ``jobs.runner``).
"""

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.db import close_old_connections, connection

from classifier.cells import services as cell_services
from classifier.jobs import runner
from classifier.models import BatchJob

logger = logging.getLogger(__name__)


@shared_task(name="classifier.run_batch_job", acks_late=True, reject_on_worker_lost=True)
def run_batch_job(job_id: int) -> str:
    job = runner.job_run(job_id=job_id)
    return job.state


def _run_in_thread(job_id: int) -> None:
    close_old_connections()
    try:
        runner.job_run(job_id=job_id)
    except Exception:  # noqa: BLE001 - a thread has no caller to tell; resume_jobs retries
        logger.exception("batch job %s stopped", job_id)
    finally:
        connection.close()


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def job_pool() -> ThreadPoolExecutor:
    """This process's pool for batch jobs (HEMATOVISION_JOB_WORKERS threads), made on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(1, settings.HEMATOVISION_JOB_WORKERS), thread_name_prefix="batch-job"
            )
        return _pool


def enqueue_job(job_id: int) -> None:
    """Run the job in the background: on the Celery queue if configured, else on the in-process pool."""
    if settings.CELERY_BROKER_URL:
        run_batch_job.delay(job_id)
    elif settings.HEMATOVISION_JOBS_IN_THREAD:
        job_pool().submit(_run_in_thread, job_id)
    else:
        runner.job_run(job_id=job_id)


def job_resume_unfinished() -> list[int]:
    """Queue again every job a restart interrupted (queued or running); returns their ids."""
    ids = list(
        BatchJob.objects.filter(state__in=[BatchJob.State.QUEUED, BatchJob.State.RUNNING])
        .order_by("created_at", "id")
        .values_list("pk", flat=True)
    )
    for job_id in ids:
        enqueue_job(job_id)
    return ids


@shared_task(name="classifier.finish_stored_uploads")
def finish_stored_uploads() -> dict:
    """Classify uploads kept while the database (spool) or the model (pending) was unavailable."""
    return cell_services.classification_finish_stored()


@worker_ready.connect
def _resume_unfinished_jobs(sender=None, **kwargs):
    """A worker that starts (after a crash or a deploy) picks up the jobs that were cut short,
    and the uploads kept as pending or spooled (as ``manage.py resume_jobs`` does)."""
    ids = job_resume_unfinished()
    if ids:
        logger.info("re-queued unfinished batch jobs %s", ids)
    finish_stored_uploads.delay()
