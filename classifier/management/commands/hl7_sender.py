"""manage.py hl7_sender: push signed and amended results (ORU^R01) to the LIS over MLLP, with retries."""

import time

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from classifier.interop import mllp


class Command(BaseCommand):
    help = (
        "Send queued HL7 results to HEMATOVISION_LIS_DESTINATIONS, wait for each ACK, retry until accepted."
    )

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="One pass over the due messages, then exit.")
        parser.add_argument("--interval", type=float, default=2.0, help="Seconds between passes.")

    def handle(self, *args, once, interval, **options):
        while True:
            close_old_connections()
            counts = mllp.deliver_due()
            if counts["accepted"] or counts["retry"]:
                self.stdout.write(f"accepted {counts['accepted']}, waiting to retry {counts['retry']}")
            if once:
                return
            time.sleep(interval)
