"""Celery application: used only when CELERY_BROKER_URL is set (see settings)."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hematovision_site.settings")

app = Celery("hematovision")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Tasks live in classifier/jobs/tasks.py; their registered names (classifier.run_batch_job, ...) are
# fixed by name= so queued messages resolve whatever the module path.
app.autodiscover_tasks(["classifier.jobs"])
