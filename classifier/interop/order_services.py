"""Filing an LIS order: binding an accession to its patient and placer order number (issue 19)."""

import logging

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from classifier.models import Specimen, accession_validator

logger = logging.getLogger(__name__)


IDENTIFIER_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def order_create(*, user, data: dict) -> tuple["Order", bool]:  # noqa: F821 - models.Order, imported below
    """File an LIS order: bind the accession to its patient and placer order number.

    ``data``: accession, placer_order_number, placer_namespace, patient_id, patient_id_authority,
    patient_family_name, patient_given_name, patient_birth_date, patient_sex, ordering_provider_*,
    collected_at, wbc_count, source, message_control_id. The specimen is created (or bound when it was
    opened by an upload and has no order yet). The same order sent again (same accession and placer
    number) is answered with the stored one, ``created`` False; another accession under a used placer
    number, or another placer number for an ordered accession, is refused (``order_conflict``).
    """
    import re

    from classifier.models import Order
    from classifier.permissions import can_order

    if not can_order(user):
        raise PermissionDenied("Only interface accounts and reviewers may place orders.")
    accession = (data.get("accession") or "").strip()
    accession_validator(accession)
    placer = (data.get("placer_order_number") or "").strip()
    namespace = (data.get("placer_namespace") or "").strip()
    for name, value in (("placer_order_number", placer), ("patient_id", data.get("patient_id") or ""),
                        ("patient_id_authority", data.get("patient_id_authority") or "")):
        if not re.match(IDENTIFIER_RE, value.strip()):
            raise ValidationError(
                f"{name} is required: 1-64 letters, digits, '.', '_' or '-'.", code="invalid_order"
            )
    fields = {
        key: data[key] for key in (
            "patient_family_name", "patient_given_name", "patient_birth_date", "patient_sex",
            "ordering_provider_id", "ordering_provider_family_name", "ordering_provider_given_name",
            "collected_at", "wbc_count", "source", "message_control_id",
        ) if data.get(key) not in (None, "")
    }
    fields["patient_id"] = data["patient_id"].strip()
    fields["patient_id_authority"] = data["patient_id_authority"].strip()
    with transaction.atomic():
        same_placer = Order.objects.select_related("specimen").filter(
            placer_namespace=namespace, placer_order_number=placer
        ).first()
        specimen, _ = Specimen.objects.get_or_create(
            accession__iexact=accession, defaults={"accession": accession, "created_by": user}
        )
        specimen = Specimen.objects.select_for_update().get(pk=specimen.pk)
        existing = Order.objects.filter(specimen=specimen).first()
        if existing is not None or same_placer is not None:
            if existing is not None and same_placer is not None and existing.pk == same_placer.pk:
                return existing, False  # the same order again (a resend): nothing changes
            raise ValidationError(
                f"Accession {accession} or placer order number {placer} is already bound to another "
                "order; an order cannot be moved to another specimen.",
                code="order_conflict",
            )
        order = Order.objects.create(
            specimen=specimen, placer_order_number=placer, placer_namespace=namespace,
            created_by=user, **fields,
        )
    return order, True
