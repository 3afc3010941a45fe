"""A simulated LIS for the end-to-end test, run as its own process (no Django): MLLP both ways.

    python lis_sim.py --record FILE [--mode normal|hold|nak-first] [--port N]
                      [--send-order HOST:PORT --order-file FILE]

It listens for results on 127.0.0.1 (``--port``, 0 for any; the first line printed is ``READY
<port>``), parses every message strictly with hl7apy (v2.5.1 STRICT validation: a message that breaks
the ORU_R01 structure is answered AR), records each delivery as a JSON line in ``--record``
(control id, OBR-25, PID-3, whether it was a duplicate of an MSH-10 already accepted) and answers:

* ``normal``: AA; a repeated MSH-10 is ACKed again and recorded as a duplicate (an LIS's duplicate
  detection);
* ``hold``: records that the message arrived, then never answers (the test kills the process);
* ``nak-first``: AE the first time it sees an MSH-10, AA after.

With ``--send-order`` it first sends the OML^O21 in ``--order-file`` to the analyser's MLLP listener
and prints ``ACK <code> <reason>``.
"""

import argparse
import json
import socket
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

START, END = b"\x0b", b"\x1c\x0d"


def read_frame(sock, buffer):
    while END not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer.extend(chunk)
    end = buffer.index(END)
    text = bytes(buffer[buffer.index(START) + 1 : end]).decode("utf-8")
    del buffer[: end + 2]
    return text


def make_ack(control_id: str, code: str, text: str = "") -> str:
    ack = Message("ACK", version="2.5.1", validation_level=VALIDATION_LEVEL.STRICT)
    ack.msh.msh_3 = "SIMLIS"
    ack.msh.msh_4 = "SIMHOSP"
    ack.msh.msh_7 = datetime.now().strftime("%Y%m%d%H%M%S")
    ack.msh.msh_9 = "ACK^R01^ACK"
    ack.msh.msh_10 = uuid.uuid4().hex[:20]
    ack.msh.msh_11 = "P"
    ack.msh.msh_12 = "2.5.1"
    ack.msa.msa_1 = code
    ack.msa.msa_2 = control_id
    if text:
        ack.msa.msa_3 = text
    return ack.to_er7() + "\r"


def accepted_ids(record: Path) -> set:
    if not record.exists():
        return set()
    return {r["control_id"] for r in map(json.loads, record.read_text().splitlines()) if r["ack"] == "AA"}


def seen_ids(record: Path) -> set:
    if not record.exists():
        return set()
    return {r["control_id"] for r in map(json.loads, record.read_text().splitlines())}


def handle(text: str, mode: str, record: Path) -> str | None:
    try:
        message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
        message.validate()
    except Exception as exc:  # noqa: BLE001 - anything a strict parser refuses is a reject
        control = text.split("\r")[0].split("|")[9] if text.count("|") > 9 else ""
        append(record, {"control_id": control, "ack": "AR", "error": str(exc)[:200]})
        return make_ack(control, "AR", "strict parse failed")
    control_id = message.msh.msh_10.to_er7()
    result = message.oru_r01_patient_result
    order = result.oru_r01_order_observation
    pids = [c for c in result.children if c.name == "ORU_R01_PATIENT"]
    row = {
        "control_id": control_id,
        "status": order.obr.obr_25.to_er7(),
        "pid_3": pids[0].pid.pid_3.to_er7() if pids else None,
        "placer": order.obr.obr_2.to_er7(),
        "filler": order.obr.obr_3.to_er7(),
        "duplicate": control_id in accepted_ids(record),
    }
    if mode == "hold":
        append(record, {**row, "ack": None})
        return None
    code = "AE" if mode == "nak-first" and control_id not in seen_ids(record) else "AA"
    append(record, {**row, "ack": code})
    return make_ack(control_id, code, "simulated refusal" if code == "AE" else "")


def append(record: Path, row: dict) -> None:
    with record.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def send_order(destination: str, text: str) -> None:
    host, port = destination.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(START + text.encode() + END)
        answer = read_frame(sock, bytearray())
    ack = parse_message(answer, validation_level=VALIDATION_LEVEL.STRICT)
    reason = ack.err.err_8.to_er7() if ack.children.get("ERR") else ""
    print("ACK", ack.msa.msa_1.to_er7(), reason, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--mode", choices=["normal", "hold", "nak-first"], default="normal")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--send-order")
    parser.add_argument("--order-file", type=Path)
    args = parser.parse_args()

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", args.port))
    server.listen(5)
    print("READY", server.getsockname()[1], flush=True)
    if args.send_order:
        send_order(args.send_order, args.order_file.read_text())
    while True:
        conn, _ = server.accept()
        with conn:
            buffer = bytearray()
            while True:
                text = read_frame(conn, buffer)
                if text is None:
                    break
                answer = handle(text, args.mode, args.record)
                if answer is None:
                    time.sleep(3600)  # hold: never answer
                conn.sendall(START + answer.encode() + END)


if __name__ == "__main__":
    sys.exit(main())
