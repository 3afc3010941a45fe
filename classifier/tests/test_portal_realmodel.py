"""The portal with the real shipped Keras model: upload a fixture cell, see a class and a heat map."""

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from classifier.cells.classes import MODEL_CODES
from classifier.models import CellClass, Classification, Status

ROOT = Path(__file__).resolve().parents[2]
MODELS = sorted((ROOT / "ml" / "artifacts").glob("*.keras"))

pytestmark = [
    pytest.mark.realmodel,
    pytest.mark.django_db,
    pytest.mark.skipif(not MODELS, reason="no shipped model yet: ml/artifacts/*.keras is absent"),
]


def test_upload_with_real_model_shows_class_and_heatmap(tech_client, settings):
    settings.HEMATOVISION_PREDICTOR = "ml"
    data = (ROOT / "ml" / "tests" / "fixtures" / "cells" / "NEUTROPHIL_1.jpeg").read_bytes()
    response = tech_client.post(
        reverse("upload"), {"images": [SimpleUploadedFile("NEUTROPHIL_1.jpeg", data)]}, follow=True
    )
    assert response.status_code == 200
    cell = Classification.objects.get()
    assert cell.status in (Status.CLASSIFIED, Status.UNIDENTIFIED), cell.status
    assert cell.predicted_label in CellClass.values
    assert cell.model_version
    assert cell.model_version != "fake-0001"
    assert sorted(cell.probabilities) == sorted(MODEL_CODES)  # the shipped model's eight
    assert abs(sum(cell.probabilities.values()) - 1.0) < 1e-3
    html = response.content.decode()
    assert f'id="predicted-label">{cell.get_predicted_label_display()}</div>' in html
    assert f'<code id="model-version">{cell.model_version}</code>' in html
    assert f'src="/classifications/{cell.pk}/heatmap/"' in html
    heatmap = tech_client.get(reverse("classification-heatmap", args=[cell.pk]))
    assert heatmap.status_code == 200
    assert heatmap["Content-Type"] == "image/png"
    assert b"".join(heatmap.streaming_content).startswith(b"\x89PNG\r\n\x1a\n")


def test_model_page_with_the_shipped_model(tech_client, settings):
    import json

    settings.HEMATOVISION_PREDICTOR = "ml"
    card = json.loads((ROOT / "ml" / "artifacts" / "model_card.json").read_text())
    test = card["test_metrics"]["per_source"]
    html = tech_client.get(reverse("model-info")).content.decode()
    assert f'<dd class="col-7"><code>{card["version"]}</code></dd>' in html
    assert "trained on the stained smears of 2 labs (BCCD, PBC)" in html
    header = html.split('id="model-classes">')[1].split("</thead>")[0]
    assert "Recall, BCCD TEST" in header
    assert "Recall, PBC test" in header
    mon = html.split("<td>Monocyte</td>")[1].split("</tr>")[0]
    assert [c.split(">")[-1].strip() for c in mon.split("</td>")[:5]] == [
        f"{card['validation_metrics']['calibrated']['per_class']['MONOCYTE']['recall']:.3f}",
        f"{test['bccd']['per_class']['MONOCYTE']['recall']:.3f}",
        f"{test['pbc']['per_class']['MONOCYTE']['recall']:.3f}",
        f"{100 * card['data']['per_class']['MONOCYTE'] / sum(card['data']['per_class'].values()):.1f} %",
        f"{card['class_bias']['MONOCYTE']:.2f}",
    ]
    baso = html.split("<td>Basophil</td>")[1].split("</tr>")[0]
    assert [c.split(">")[-1].strip() for c in baso.split("</td>")[1:3]] == [
        "—",  # BCCD has no basophil
        f"{test['pbc']['per_class']['BASOPHIL']['recall']:.3f}",
    ]
    for source, name in (("bccd", "BCCD TEST"), ("pbc", "PBC test")):
        m = test[source]
        figures = (
            f"accuracy {m['accuracy']:.3f}, {100 * m['flagged']:.1f} % flagged unidentified, "
            f"{100 * m['silent_error']:.1f} % wrong and not flagged."
        )
        assert f"{name} ({m['n_images']} images): {figures}" in html
    assert "calibrated for the class balance of the training images" in html
