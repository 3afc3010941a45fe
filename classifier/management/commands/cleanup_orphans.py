"""List (and with --delete remove) stored files that no row refers to.

Orphans come from a process killed between writing files and committing the rows that name them:
a batch's staged files (found at once: their staging lock is free), or an upload's image and heat
map (found once older than --min-age). A dry run by default: it lists and changes nothing.
"""

from django.conf import settings
from django.core.management.base import BaseCommand

from classifier import staging
from classifier.cells.validation import human_size


class Command(BaseCommand):
    help = "List stored files that no row refers to; --delete removes them (dry run by default)."

    def add_arguments(self, parser):
        parser.add_argument("--delete", action="store_true", help="remove the files listed")
        parser.add_argument(
            "--min-age",
            type=float,
            default=None,
            help="seconds a file must be old before it counts as an orphan (files of a crashed staging "
            "count at once); default HEMATOVISION_ORPHAN_MIN_AGE_SECONDS "
            f"({settings.HEMATOVISION_ORPHAN_MIN_AGE_SECONDS})",
        )

    def handle(self, *args, delete=False, min_age=None, **options):
        found = staging.orphans(min_age=min_age)
        for orphan in found:
            self.stdout.write(f"{orphan.name}\t{orphan.size}\t{orphan.reason}")
        total = sum(o.size for o in found)
        if delete:
            staging.remove(found)
            self.stdout.write(f"removed {len(found)} orphan file(s), {human_size(total)}")
        else:
            self.stdout.write(
                f"{len(found)} orphan file(s), {human_size(total)}; dry run, nothing removed (use --delete)"
            )
