"""The site's WSGI application for tests that start a real server (tests/test_hardening_live.py).

With HV_TEST_PREDICT_DELAY=<seconds> every model call waits that long first, so requests sent at
the same moment are certainly in flight together (a race is exercised, not hoped for).
"""

import os
import time

from hematovision_site.wsgi import application  # noqa: F401 - what gunicorn serves

_delay = float(os.environ.get("HV_TEST_PREDICT_DELAY", "0") or 0)
if _delay:
    from classifier.cells import pending

    _predict = pending.predict

    def _slow_predict(checked):
        time.sleep(_delay)
        return _predict(checked)

    pending.predict = _slow_predict
