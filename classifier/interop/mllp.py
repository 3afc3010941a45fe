"""HL7 v2 over MLLP: orders in (a listener that answers ACK), results out (a sender that waits for one).

MLLP (HL7 v2 Minimal Lower Layer Protocol, Appendix C of the v2 standard): each message is framed as
``<VT=0x0B> message <FS=0x1C><CR=0x0D>`` on a TCP stream; the receiver answers each message with one
framed acknowledgement before the next is sent. Original-mode acknowledgement (HL7 table 0008):
``AA`` accepted, ``AE`` error (the message was understood but refused; the sender should fix it),
``AR`` reject (not processable: wrong type, version or structure). ``CA``/``CE``/``CR`` are the
enhanced-mode commit codes, read the same way.

Delivery of results (``deliver_due``, run by ``manage.py hl7_sender``): each queued message is sent,
the ACK awaited for ``HEMATOVISION_HL7_ACK_TIMEOUT_SECONDS``; ``AA``/``CA`` marks it accepted, anything
else (a negative ACK, a timeout, a refused or dropped connection) is logged on the message and
retried with a doubling back-off. The payload, MSH-10 included, is the same on every attempt, so an
LIS that got the message but whose ACK was lost drops the repeat as a duplicate. Messages to one
destination go in order: a message waiting for a retry holds back the later ones to that destination.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import uuid
from collections.abc import Callable

from django.conf import settings
from django.utils import timezone
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from classifier.interop import APPLICATION
from classifier.interop.er7 import Er7, escape

logger = logging.getLogger(__name__)

START, END = b"\x0b", b"\x1c\x0d"
MAX_MESSAGE_BYTES = 1024 * 1024


def frame(text: str) -> bytes:
    return START + text.encode("utf-8") + END


class MLLPError(OSError):
    """The peer closed, timed out or sent something that is not an MLLP frame."""


def read_frame(sock: socket.socket, buffer: bytearray) -> str | None:
    """The next framed message on ``sock`` (None when the peer closed between messages)."""
    while True:
        end = buffer.find(END)
        if end != -1:
            start = buffer.find(START)
            if start == -1 or start > end:
                raise MLLPError("data outside an MLLP frame")
            text = bytes(buffer[start + 1 : end]).decode("utf-8", errors="replace")
            del buffer[: end + len(END)]
            return text
        if len(buffer) > MAX_MESSAGE_BYTES:
            raise MLLPError("message larger than the limit")
        chunk = sock.recv(65536)
        if not chunk:
            if buffer.strip():
                raise MLLPError("connection closed inside a message")
            return None
        buffer.extend(chunk)


def send(destination: str, text: str, *, timeout: float | None = None) -> str:
    """Send one message to ``host:port`` and return the framed answer (the ACK's ER7)."""
    host, _, port = destination.rpartition(":")
    timeout = float(settings.HEMATOVISION_HL7_ACK_TIMEOUT_SECONDS if timeout is None else timeout)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(frame(text))
            answer = read_frame(sock, bytearray())
    except TimeoutError as exc:
        raise MLLPError(f"no ACK within {timeout:g} s") from exc
    if answer is None:
        raise MLLPError("connection closed before the ACK")
    return answer


def parse_ack(text: str) -> tuple[str, str, str]:
    """(MSA-1 code, MSA-2 control id, the reason: ERR-8, else MSA-3) of an ACK."""
    message = Er7(text)
    if message.get("MSH", 9, 1) != "ACK":
        raise MLLPError(f"not an ACK: {message.get('MSH', 9) or text[:40]!r}")
    reason = message.get("ERR", 8) or message.get("MSA", 3)
    return message.get("MSA", 1), message.get("MSA", 2), reason


def ack(received: str, code: str, *, reason: str = "", error_code: str = "") -> str:
    """The ACK (v2.5.1, strictly valid) to ``received``: MSA-1 ``code``, MSA-2 its MSH-10, and for
    AE/AR an ERR segment with the HL7 table 0357 code and the reason for people (ERR-8; MSA-3 too,
    which older receivers read)."""
    try:
        incoming = Er7(received)
        control_id, trigger = incoming.get("MSH", 10), incoming.get("MSH", 9, 2)
        their_app, their_facility = incoming.get("MSH", 3), incoming.get("MSH", 4)
    except ValueError:
        control_id, trigger, their_app, their_facility = "", "", "", ""
    from classifier.interop.hl7 import CHARACTER_SET, VERSION, _ts, facility

    msg = Message("ACK", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msg.msh.msh_3 = APPLICATION
    msg.msh.msh_4 = facility()
    if their_app:
        msg.msh.msh_5 = escape(their_app[:20])
    if their_facility:
        msg.msh.msh_6 = escape(their_facility[:20])
    msg.msh.msh_7 = _ts(timezone.now())
    msg.msh.msh_9 = f"ACK^{escape(trigger[:3])}^ACK" if trigger else "ACK^^ACK"
    msg.msh.msh_10 = uuid.uuid4().hex[:20]
    msg.msh.msh_11 = "P"
    msg.msh.msh_12 = VERSION
    msg.msh.msh_18 = CHARACTER_SET
    msg.msa.msa_1 = code
    msg.msa.msa_2 = escape(control_id[:20])
    if reason:
        msg.msa.msa_3 = escape(" ".join(reason.split())[:80])
    if code != "AA":
        err = msg.add_segment("ERR")
        err.err_3 = f"{error_code or '207'}^{ERROR_NAMES.get(error_code or '207', '')}^HL70357"
        err.err_4 = "E"
        if reason:
            err.err_8 = escape(" ".join(reason.split())[:250])
    msg.validate()
    return msg.to_er7() + "\r"


# HL7 table 0357, the codes used here.
ERROR_NAMES = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "203": "Unsupported version id",
    "205": "Duplicate key identifier",
    "207": "Application internal error",
}


class _Handler(socketserver.BaseRequestHandler):
    def handle(self):
        from django.db import close_old_connections

        buffer = bytearray()
        self.request.settimeout(self.server.idle_timeout)
        while True:
            try:
                text = read_frame(self.request, buffer)
            except (OSError, MLLPError) as exc:
                logger.info("MLLP connection from %s ended: %s", self.client_address, exc)
                return
            if text is None:
                return
            close_old_connections()
            try:
                answer = self.server.on_message(text)
            except Exception:  # noqa: BLE001 - a listener answers every message, AE at worst
                logger.exception("HL7 message handling failed")
                answer = ack(text, "AE", reason="The message could not be processed.", error_code="207")
            finally:
                close_old_connections()
            self.request.sendall(frame(answer))


class Listener(socketserver.ThreadingTCPServer):
    """An MLLP server that answers every framed message with ``on_message(text)`` (an ACK)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], on_message: Callable[[str], str], idle_timeout: float = 300):
        self.on_message = on_message
        self.idle_timeout = idle_timeout
        super().__init__(address, _Handler)

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="mllp-listener", daemon=True)
        thread.start()
        return thread


def deliver_due(*, limit: int = 100) -> dict:
    """Try every message whose time has come, once: ``{"accepted": n, "retry": n}``."""
    from classifier.interop import outbox
    from classifier.models import OutboundMessage

    due = list(
        OutboundMessage.objects.filter(
            state__in=[OutboundMessage.State.QUEUED, OutboundMessage.State.RETRY],
        ).order_by("id")[:limit]
    )
    counts = {"accepted": 0, "retry": 0}
    held = set()  # destinations whose earlier message is waiting: later ones wait behind it
    now = timezone.now()
    for message in due:
        if message.destination in held:
            continue
        if message.next_attempt_at > now:
            held.add(message.destination)
            continue
        try:
            code, control_id, reason = parse_ack(send(message.destination, message.payload))
            if control_id != message.control_id:
                code, reason = "", f"ACK for {control_id!r}, not {message.control_id!r}: {reason}"
            recorded = outbox.message_record_attempt(
                message=message,
                ack_code=code,
                ack_text=reason,
                error="" if code else "wrong ACK",
            )
        except (OSError, MLLPError, ValueError) as exc:
            recorded = outbox.message_record_attempt(message=message, error=str(exc) or type(exc).__name__)
        if recorded.state == OutboundMessage.State.ACCEPTED:
            counts["accepted"] += 1
        else:
            counts["retry"] += 1
            held.add(message.destination)
    return counts
