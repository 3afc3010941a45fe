"""Settings for the Celery queue test's subprocesses (manage.py and the worker).

The project's settings, plus an optional delay in the fake predictor
(HEMATOVISION_TEST_PREDICT_DELAY seconds) so the test can kill a worker while a
batch is half done.
"""

import os
import time

from hematovision_site.settings import *  # noqa: F403

_DELAY = float(os.environ.get("HEMATOVISION_TEST_PREDICT_DELAY", "0") or 0)

if _DELAY:
    from classifier.testing import fake_predictor

    _predict_one = fake_predictor.FakePredictor.predict_one

    def _slow_predict_one(self, image):
        time.sleep(_DELAY)
        return _predict_one(self, image)

    fake_predictor.FakePredictor.predict_one = _slow_predict_one
