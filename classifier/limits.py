"""Per-process bounds on memory-heavy work: decoding an image and running the model on it.

``image_work()`` holds one of HEMATOVISION_IMAGE_WORKERS slots (default 2) while an upload is
decoded, normalised, re-encoded and classified. Every web thread, batch-job thread and field
locator in the process shares the slots, so N concurrent uploads cost at most ``slots`` decoded
images at a time (each bounded by ``validation``'s decoded-size estimate), however many arrive.
A thread that already holds a slot may enter again (a field's cells are classified inside the
field's slot). A request that waits longer than HEMATOVISION_IMAGE_WORK_WAIT_SECONDS is answered
503 ``server_busy`` with Retry-After rather than queued without end.
"""

import contextlib
import threading

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from classifier.cells.validation import ImageRejected


class ServerBusy(ImageRejected):
    """Every image slot stayed taken for the whole wait; the client should retry shortly (503).

    An ImageRejected, so every caller that reports a refused upload reports this one too.
    """

    retry_after = 5

    def __init__(self):
        super().__init__(
            "server_busy",
            "The server is busy classifying other images; nothing was stored. Retry in a few seconds.",
            503,
        )


_build_lock = threading.Lock()
_semaphore: threading.BoundedSemaphore | None = None
_held = threading.local()


def _slots() -> threading.BoundedSemaphore:
    global _semaphore
    with _build_lock:
        if _semaphore is None:
            _semaphore = threading.BoundedSemaphore(max(1, int(settings.HEMATOVISION_IMAGE_WORKERS)))
        return _semaphore


@contextlib.contextmanager
def patient():
    """In this block, this thread waits for a slot as long as it takes (batch jobs: no client waits)."""
    _held.patient = True
    try:
        yield
    finally:
        _held.patient = False


@contextlib.contextmanager
def image_work():
    """Hold an image slot for the block (re-entrant within one thread)."""
    depth = getattr(_held, "depth", 0)
    if depth:
        _held.depth = depth + 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    semaphore = _slots()
    wait = None if getattr(_held, "patient", False) else float(settings.HEMATOVISION_IMAGE_WORK_WAIT_SECONDS)
    if not semaphore.acquire(timeout=wait):
        raise ServerBusy()
    _held.depth = 1
    try:
        yield
    finally:
        _held.depth = 0
        semaphore.release()


@receiver(setting_changed)
def _reset(*, setting, **kwargs):
    global _semaphore
    if setting == "HEMATOVISION_IMAGE_WORKERS":
        with _build_lock:
            _semaphore = None
