"""manage.py hl7_listener: receive LIS orders (OML^O21, ORM^O01) over MLLP and answer each with an ACK."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from classifier.interop import mllp, orders


class Command(BaseCommand):
    help = "Listen for HL7 v2 orders over MLLP (HEMATOVISION_HL7_LISTEN) and file them."

    def add_arguments(self, parser):
        parser.add_argument("--listen", default=settings.HEMATOVISION_HL7_LISTEN, help="host:port")
        parser.add_argument(
            "--user",
            default=settings.HEMATOVISION_HL7_ORDER_USER,
            help="The Interface account orders are filed as.",
        )

    def handle(self, *args, listen, user, **options):
        if not user:
            raise CommandError(
                "Name the Interface account orders are filed as (--user or HEMATOVISION_HL7_ORDER_USER)."
            )
        try:
            account = orders.order_user(user)
        except Exception as exc:  # noqa: BLE001 - a missing or role-less account: say so and stop
            raise CommandError(str(exc)) from exc
        host, _, port = listen.rpartition(":")
        address = (host or "0.0.0.0", int(port))  # noqa: S104 - ":2575" means every interface, as asked
        server = mllp.Listener(address, lambda text: orders.handle_order(text, user=account))
        self.stdout.write(f"HL7 listener on {host}:{server.server_address[1]}, orders filed as {user}")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
