"""Reads of specimens: lists, the differential, the gallery, released versions, the result as sent."""

import hashlib
from datetime import date

from django.conf import settings
from django.db.models import Count, Q, QuerySet

from classifier import inference
from classifier.cells import differential as differentials
from classifier.cells import ranges
from classifier.cells import selectors as cell_selectors
from classifier.cells.classes import CODES
from classifier.models import Classification, ReviewState, Specimen, Status
from classifier.permissions import can_read_all, can_review, can_submit

# The cells the specimen check judges: those the model has read (pending ones not yet).
READ_BY_MODEL = (Status.CLASSIFIED, Status.UNIDENTIFIED)


def with_check_counts(specimens: QuerySet[Specimen]) -> QuerySet[Specimen]:
    """``specimens`` annotated with the specimen check's counts (as ``specimen_check`` counts them):
    ``n_read`` cells the model has read, ``n_model_flagged`` of them it left unidentified."""
    return specimens.annotate(
        n_read=Count("cells", filter=Q(cells__status__in=READ_BY_MODEL)),
        n_model_flagged=Count("cells", filter=Q(cells__status=Status.UNIDENTIFIED)),
    )


def check_listed(specimens) -> list[Specimen]:
    """The specimens of a page (annotated by ``with_check_counts``), each given ``check``: its
    specimen check's verdict, judged by one rule for the whole page."""
    specimens = list(specimens)
    rule = inference.specimen_rule()
    for specimen in specimens:
        specimen.check = rule.check(specimen.n_read, specimen.n_model_flagged)
    return specimens


def specimen_worklist(*, user) -> QuerySet[Specimen]:
    """Specimens awaiting a reviewer's sign-off (unsigned, holding at least one cell), oldest first,
    with their cell counts: total, reviewed, unreviewed, unidentified (unreviewed), flagged by the
    model, pending, and the specimen check's (``with_check_counts``)."""
    if not can_review(user):
        return Specimen.objects.none()
    unreviewed = Q(cells__review_state=ReviewState.UNREVIEWED)
    return (
        with_check_counts(specimen_list(user=user).filter(signed_at__isnull=True))
        .annotate(
            n_cells=Count("cells"),
            n_unreviewed=Count("cells", filter=unreviewed),
            n_unidentified=Count("cells", filter=unreviewed & Q(cells__status=Status.UNIDENTIFIED)),
            n_flagged=Count("cells", filter=~Q(cells__flag_reason="")),
            n_pending=Count("cells", filter=Q(cells__status=Status.PENDING)),
        )
        .filter(n_cells__gt=0)
        .order_by("created_at", "id")
    )


def specimen_neighbours(*, user, specimen: Specimen) -> tuple[Specimen | None, Specimen | None]:
    """The specimens before and after ``specimen`` in the reviewer's worklist (oldest first)."""
    worklist = specimen_worklist(user=user).exclude(pk=specimen.pk)
    earlier = Q(created_at__lt=specimen.created_at) | Q(created_at=specimen.created_at, id__lt=specimen.pk)
    previous = worklist.filter(earlier).order_by("-created_at", "-id").first()
    following = worklist.exclude(earlier).first()
    return previous, following


def specimen_review_version(cells) -> str:
    """Changes whenever a cell of the specimen is added, reviewed or signed: the sign-off
    confirmation sends back the one its differential was drawn from."""
    digest = hashlib.sha256()
    for cell in sorted(cells, key=lambda c: c.pk):
        digest.update(f"{cell.pk}:{cell.review_version}:{cell.final_label};".encode())
    return digest.hexdigest()[:32]


def specimen_list(*, user) -> QuerySet[Specimen]:
    qs = Specimen.objects.select_related("created_by", "signed_by", "order")
    if can_read_all(user):
        return qs
    if can_submit(user):
        return qs.filter(created_by=user)
    return qs.none()


def specimens_in_range(*, user, start: date | None, end: date | None) -> QuerySet[Specimen]:
    """The specimens the user may see, received between ``start`` and ``end`` (inclusive, local dates)."""
    qs = specimen_list(user=user)
    if start:
        qs = qs.filter(created_at__date__gte=start)
    if end:
        qs = qs.filter(created_at__date__lte=end)
    return qs.order_by("created_at", "id")


def specimen_get(*, user, accession: str) -> Specimen:
    """Raises Specimen.DoesNotExist for specimens the user may not see."""
    return specimen_list(user=user).get(accession__iexact=accession.strip())


def specimen_cells(*, specimen: Specimen) -> QuerySet[Classification]:
    """Every cell of a specimen the user may see (``specimen_get``): what its differential counts.
    ``classification_get`` lets the same users open each of them."""
    return cell_selectors.cells_shown().filter(specimen=specimen).order_by("created_at", "id")


def specimen_patient(*, specimen: Specimen) -> ranges.Patient | None:
    """The patient's age at collection and sex, from the LIS order; None without an order."""
    from django.utils import timezone

    from classifier.models import Order

    order = Order.objects.filter(specimen=specimen).first()
    if order is None:
        return None
    collected = timezone.localdate(order.collected_at or specimen.created_at)
    return ranges.Patient(
        age_months=ranges.age_in_months(order.patient_birth_date, collected),
        sex=order.patient_sex if order.patient_sex in ranges.SEX_NAMES else None,
    )


def specimen_check(*, cells) -> inference.SpecimenVerdict:
    """The specimen check (``inference.specimen_check``) of a specimen's ``cells``: those the model has
    read (classified or unidentified; pending ones are not), and of them those the model flagged
    (status unidentified, whatever a reviewer did since)."""
    read = [c for c in cells if c.status in READ_BY_MODEL]
    flagged = sum(1 for c in read if c.status == Status.UNIDENTIFIED)
    return inference.specimen_check(cells=len(read), flagged=flagged)


def specimen_differential(*, specimen: Specimen) -> differentials.Differential:
    """The specimen's differential (``cells.differential``): white cells to 100 %, nucleated red
    cells per 100 white cells, platelets, smudge cells and artefacts apart.

    A cell counts under its final label when reviewed; unreviewed unidentified cells are counted
    apart. The classes its models knew are the keys of each cell's probabilities (the card's). The
    reference ranges are those for the ordered patient's age and sex (``specimen_patient``); the
    order's white-cell count, when it gives one, adds the absolute counts; ``specimen_check`` is the
    specimen check's verdict (``specimen_check``).
    """
    cells = list(specimen.cells.all())
    counted = [
        c for c in cells
        if c.status == Status.CLASSIFIED or (c.status == Status.UNIDENTIFIED and c.final_label)
    ]
    unreviewed = sum(1 for c in cells if c.review_state == ReviewState.UNREVIEWED)
    pending = sum(1 for c in cells if c.status == Status.PENDING)
    from classifier.models import Order

    return differentials.build(
        labels=[c.label for c in counted],
        model_classes={name for c in cells for name in (c.probabilities or {})},
        min_count_for_flags=settings.HEMATOVISION_MIN_CELLS_FOR_FLAGS,
        patient=specimen_patient(specimen=specimen),
        wbc_count=Order.objects.filter(specimen=specimen).values_list("wbc_count", flat=True).first(),
        accession=specimen.accession,
        total_cells=len(cells),
        unidentified=sum(
            1 for c in cells if c.status == Status.UNIDENTIFIED and c.review_state == ReviewState.UNREVIEWED
        ),
        pending=pending,
        unreviewed=unreviewed,
        signed=specimen.is_signed,
        signed_by=specimen.signed_by.get_username() if specimen.signed_by else None,
        signed_at=specimen.signed_at,
        ready_to_sign=bool(cells) and unreviewed == 0 and pending == 0 and not specimen.is_signed,
        specimen_check=specimen_check(cells=cells),
    )


UNIDENTIFIED_GROUP = "UNIDENTIFIED"


PENDING_GROUP = "PENDING"


GROUP_NAMES = {UNIDENTIFIED_GROUP: "Unidentified", PENDING_GROUP: "Pending (model unavailable)"}


def cell_group(cell: Classification) -> str:
    """Which gallery section (portal and PDF) a cell is shown in: its class, or unidentified / pending."""
    if cell.status == Status.PENDING:
        return PENDING_GROUP
    if cell.status == Status.UNIDENTIFIED and not cell.final_label:
        return UNIDENTIFIED_GROUP
    return cell.label


def gallery_order(keys) -> list[str]:
    """Sections in gallery order: unidentified first (a human must clear them), then the table's
    classes, a future model's classes, pending last."""
    keys = set(keys)
    return [
        UNIDENTIFIED_GROUP,
        *CODES,
        *sorted(keys - {*CODES, UNIDENTIFIED_GROUP, PENDING_GROUP}),
        PENDING_GROUP,
    ]


def specimen_gallery(*, specimen: Specimen, all_sections: bool = False) -> list[tuple[str, str, list]]:
    """``[(group, name, cells)]`` in gallery order; empty sections only with ``all_sections`` (the
    review page keeps one for every class, so a cell can be moved into it)."""
    from classifier.cells.classes import display_name

    groups: dict[str, list[Classification]] = {}
    for cell in specimen_cells(specimen=specimen):
        groups.setdefault(cell_group(cell), []).append(cell)
    return [
        (key, GROUP_NAMES.get(key) or display_name(key), groups.get(key, []))
        for key in gallery_order(groups)
        if groups.get(key) or all_sections
    ]


def specimen_last_modified(*, specimen: Specimen):
    """When anything a result shows last changed: a cell added, reviewed or signed, the order, a
    released version. Polls compare it (``updated_after``, Last-Modified); a preliminary result's
    ``issued`` is this, not the time of the fetch."""
    from django.db.models import Max

    from classifier.models import Order, ReportVersion

    times = [specimen.created_at, specimen.signed_at]
    times += specimen.cells.aggregate(a=Max("created_at"), b=Max("reviewed_at"), c=Max("signed_at")).values()
    times.append(Order.objects.filter(specimen=specimen).values_list("updated_at", flat=True).first())
    times.append(ReportVersion.objects.filter(specimen=specimen).aggregate(m=Max("released_at"))["m"])
    return max(t for t in times if t is not None)


def specimen_filter_changed(
    qs: QuerySet[Specimen], *, signed_after=None, updated_after=None
) -> QuerySet[Specimen]:
    """``signed_after``: released (signed or amended) after that instant; ``updated_after``: anything
    changed after it (``specimen_last_modified``'s facts)."""
    if signed_after is not None:
        qs = qs.filter(Q(signed_at__gt=signed_after) | Q(report_versions__released_at__gt=signed_after))
    if updated_after is not None:
        qs = qs.filter(
            Q(created_at__gt=updated_after) | Q(signed_at__gt=updated_after)
            | Q(cells__created_at__gt=updated_after) | Q(cells__reviewed_at__gt=updated_after)
            | Q(order__updated_at__gt=updated_after) | Q(report_versions__released_at__gt=updated_after)
        )
    return qs.distinct() if signed_after is not None or updated_after is not None else qs


def specimen_versions(*, specimen: Specimen):
    """The released report versions, first to latest (each kept as it was sent)."""
    return specimen.report_versions.select_related("released_by").order_by("number")


def specimen_result(*, specimen: Specimen, version: int | None = None) -> dict:
    """What the HL7 and FHIR answers are drawn from.

    A signed specimen answers its released version (the latest, or ``version``), byte for byte as
    it was sent, and so does one reopened by an amendment to add images until its next version is
    released; a specimen never released a preliminary result built now, stable while nothing changes.
    Keys: ``version`` (a ReportVersion or None), ``differential``, ``order``, ``model_versions``,
    ``last_modified``, ``comment``.
    """
    from classifier.interop import lis_images, model_versions
    from classifier.models import Order

    versions = specimen.report_versions.all()
    chosen = None
    if version is not None:
        chosen = versions.get(number=version)  # ReportVersion.DoesNotExist: 404
    else:  # None before the first sign-off
        chosen = versions.order_by("-number").first()
    cells = list(specimen.cells.select_related("owner"))
    return {
        "version": chosen,
        "images": lis_images(cells),
        "differential": specimen_differential(specimen=specimen),
        "order": Order.objects.filter(specimen=specimen).first(),
        "model_versions": model_versions(cells),
        "last_modified": chosen.released_at if chosen else specimen_last_modified(specimen=specimen),
        "comment": getattr(specimen, "review_comment", "") or "",
        "versions": list(versions.order_by("number").values_list("number", flat=True)),
    }
