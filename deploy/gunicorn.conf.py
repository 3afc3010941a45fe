"""gunicorn settings for a lab server: a few processes, threads share one loaded model each."""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
max_requests = 2000
max_requests_jitter = 200
accesslog = "-"
# Load the app in each worker (not the master) so every worker builds its own TensorFlow runtime.
preload_app = False


def post_worker_init(worker):
    """Load the model as soon as the worker has loaded the app, in a background thread: the first
    upload does not wait for it, and the portal shows "Model loading" until it is ready."""
    from classifier import inference

    inference.warm_up_in_background()
