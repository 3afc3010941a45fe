"""Issue 19: the white-cell count an HL7 order carries (an OBX coded 6690-2 or 26464-8) is stored as
the REST order's ``wbc_count`` (10^9/L); a count that cannot be read is refused with AE and files
nothing."""

import pytest

from classifier.interop import orders
from classifier.models import Order, Specimen
from classifier.tests.test_lis import OML, strict

OBX = "OBX|1|NM|6690-2^Leukocytes [#/volume] in Blood by Automated count^LN||{value}|{unit}^^UCUM|||||F\r"


@pytest.fixture
def interface(db):
    from django.contrib.auth.models import Group

    from accounts.roles import INTERFACE
    from accounts.tests.factories import UserFactory

    user = UserFactory(username="lis")
    user.groups.add(Group.objects.get_or_create(name=INTERFACE)[0])
    return user


def with_obx(obx: str, message: str = OML) -> str:
    """The order with ``obx`` after its OBR (OML_O21 OBSERVATION_REQUEST's OBSERVATION group)."""
    head, spm = message.split("SPM|", 1)
    return f"{head}{obx}SPM|{spm}"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("value", "unit", "stored"),
    [("7.2", "10*3/uL", 7.2), ("7.2", "10*9/L", 7.2), ("7200", "/uL", 7.2), ("12", "K/uL", 12.0)],
)
def test_the_orders_white_cell_count_is_stored_in_10_9_per_litre(interface, value, unit, stored):
    answer = strict(orders.handle_order(with_obx(OBX.format(value=value, unit=unit)), user=interface))
    assert answer.msa.msa_1.to_er7() == "AA"
    order = Order.objects.get()
    assert (order.specimen.accession, order.wbc_count, order.source) == ("ACC-LIS-1", stored, "hl7")


@pytest.mark.django_db
def test_the_code_may_be_the_alternate_and_an_orm_carries_it_too(interface):
    obx = "OBX|1|NM|WBC^White cells^99LIS^26464-8^Leukocytes [#/volume] in Blood^LN||5.5|10*9/L|||||F\r"
    orm = (
        OML.replace("OML^O21^OML_O21", "ORM^O01^ORM_O01")
        .replace("ORC|NW|PO-1001^SIMLIS|", "ORC|NW|PO-1001^SIMLIS|ACC-ORM-1^HEMATOVISION")
        .split("\rSPM")[0]
        + "\r"
        + obx
    )
    assert strict(orders.handle_order(orm, user=interface)).msa.msa_1.to_er7() == "AA"
    assert Order.objects.values_list("specimen__accession", "wbc_count").get() == ("ACC-ORM-1", 5.5)


@pytest.mark.django_db
def test_an_order_without_a_count_has_none_and_other_observations_are_ignored(interface):
    other = "OBX|1|NM|718-7^Hemoglobin [Mass/volume] in Blood^LN||13.5|g/dL|||||F\r"
    assert strict(orders.handle_order(with_obx(other), user=interface)).msa.msa_1.to_er7() == "AA"
    assert Order.objects.get().wbc_count is None


UNIT_HELP = "of the white-cell count is not understood; send 10*9/L or 10*3/uL."


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("value", "unit", "reason"),
    [
        ("seven", "10*3/uL", "OBX-5 white-cell count 'seven' is not a number (value type NM)."),
        ("-1", "10*3/uL", "OBX-5 white-cell count '-1' is not a number (value type NM)."),
        ("7.2", "mmol/L", f"OBX-6 unit 'mmol/L' {UNIT_HELP}"),
        ("7.2", "", f"OBX-6 unit '' {UNIT_HELP}"),
    ],
)
def test_an_unreadable_count_is_refused_and_files_nothing(interface, value, unit, reason):
    answer = strict(orders.handle_order(with_obx(OBX.format(value=value, unit=unit)), user=interface))
    assert answer.msa.msa_1.to_er7() == "AE"
    assert reason.startswith(answer.msa.msa_3.to_er7())  # MSA-3 holds 80 characters, ERR-8 all of it
    assert (answer.err.err_3.to_er7().split("^")[0], answer.err.err_8.to_er7()) == ("102", reason)
    assert not Order.objects.exists()
    assert not Specimen.objects.exists()
