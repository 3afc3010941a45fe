"""factory_boy factories for the classifier: specimens, classifications, review events.

``image_bytes()`` makes a small real image whose dominant colour chooses the fake
predictor's label (red -> EOSINOPHIL, green -> LYMPHOCYTE, blue -> MONOCYTE).
"""

import io
import struct
import zlib

import factory
from django.contrib.auth.models import Group
from PIL import Image

from accounts.roles import REVIEWER, TECHNOLOGIST
from accounts.tests.factories import UserFactory
from classifier.cells.classes import FIRST_MODEL_CODES
from classifier.models import CellClass, Classification, ReviewEvent, ReviewState, Specimen, Status

COLOURS = {
    CellClass.EOSINOPHIL: (200, 60, 60),
    CellClass.LYMPHOCYTE: (60, 200, 60),
    CellClass.MONOCYTE: (60, 60, 200),
}


def image_bytes(colour=(200, 60, 60), size=(64, 48), fmt="JPEG", noise=True) -> bytes:
    """A real image in ``fmt``; ``noise`` adds texture so the fake predictor does not call it flat."""
    image = Image.new("RGB", size, colour)
    if noise:
        pixels = image.load()
        for x in range(0, size[0], 4):
            for y in range(0, size[1], 4):
                r, g, b = colour
                pixels[x, y] = (max(r - 40, 0), max(g - 40, 0), max(b - 40, 0))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def probabilities_for(label: str, confidence: float = 0.88, classes=FIRST_MODEL_CODES) -> dict:
    """A probability per class of the model that read the cell: by default the first, four-class
    model (``model_version`` fake-0001); ``classes=MODEL_CODES`` for the eight-class one."""
    rest = round((1.0 - confidence) / (len(classes) - 1), 4)
    return {name: (confidence if name == label else rest) for name in classes}


def _add_roles(user, names) -> None:
    for name in names:
        user.groups.add(Group.objects.get(name=name))


class TechnologistFactory(UserFactory):
    """A user in the Technologist group (pass ``roles=[...]`` to choose others)."""

    @factory.post_generation
    def roles(self, create, extracted, **kwargs):
        _add_roles(self, extracted if extracted is not None else [TECHNOLOGIST])


class ReviewerFactory(UserFactory):
    """A user in the Reviewer group."""

    @factory.post_generation
    def roles(self, create, extracted, **kwargs):
        _add_roles(self, extracted if extracted is not None else [REVIEWER])


class SpecimenFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Specimen

    accession = factory.Sequence(lambda n: f"ACC-{n:05d}")
    created_by = factory.SubFactory(TechnologistFactory)


class ClassificationFactory(factory.django.DjangoModelFactory):
    """A classified cell with its image and heat map stored (in the test's temp MEDIA_ROOT)."""

    class Meta:
        model = Classification

    class Params:
        unidentified = factory.Trait(
            status=Status.UNIDENTIFIED,
            confidence=0.31,
            flag_reason="low_confidence",
            flag_message="The model is unsure which class this cell belongs to.",
        )

    owner = factory.SubFactory(TechnologistFactory)
    specimen = None
    original_filename = factory.Sequence(lambda n: f"cell_{n}.jpg")
    image = factory.django.FileField(filename="x.jpg", data=factory.LazyFunction(image_bytes))
    heatmap = factory.django.FileField(
        filename="x.png", data=factory.LazyFunction(lambda: image_bytes((250, 60, 60), fmt="PNG"))
    )
    image_sha256 = factory.Sequence(lambda n: f"{n:064x}")
    width = 64
    height = 48
    status = Status.CLASSIFIED
    predicted_label = CellClass.EOSINOPHIL
    confidence = 0.88
    probabilities = factory.LazyAttribute(lambda o: probabilities_for(o.predicted_label, o.confidence))
    model_version = "fake-0001"
    review_state = ReviewState.UNREVIEWED


class ReviewEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ReviewEvent

    classification = factory.SubFactory(ClassificationFactory)
    actor = factory.SubFactory(ReviewerFactory)
    action = ReviewEvent.Action.CONFIRM
    from_label = factory.LazyAttribute(lambda o: o.classification.predicted_label)
    to_label = factory.LazyAttribute(lambda o: o.classification.predicted_label)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024, 9)) + chunk(b"IEND", b""))
