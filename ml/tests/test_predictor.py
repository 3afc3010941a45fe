"""The predictor interface the web app uses: odd inputs, flags, errors."""

import io

import numpy as np
import pytest
from PIL import Image

from ml.predictor import ImageDecodeError, ModelLoadError, Prediction, load_predictor

pytestmark = pytest.mark.realmodel  # uses the shipped model


def _check(p: Prediction, classes):
    assert p.label in classes
    assert list(p.probabilities) == classes
    assert abs(sum(p.probabilities.values()) - 1) < 1e-4
    assert p.confidence == pytest.approx(max(p.probabilities.values()))
    assert p.probabilities[p.label] == pytest.approx(p.confidence)
    assert p.status in ("classified", "unidentified")
    assert (p.flag_reason is None) == (p.status == "classified") == (p.flag_message is None)
    assert p.model_version


def test_fixture_cells_classified(predictor, cell_images):
    preds = predictor.predict(list(cell_images.values()))
    correct = 0
    for name, p in zip(cell_images, preds, strict=True):
        _check(p, predictor.classes)
        assert p.cell_box is not None
        correct += p.label == name.split("_")[0]
    assert correct >= len(cell_images) - 2


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_odd_inputs(predictor, cell_images):
    rgb = Image.open(io.BytesIO(cell_images["NEUTROPHIL_1"])).convert("RGB")
    ref = predictor.predict_one(rgb)
    grey = rgb.convert("L")
    rgba = rgb.convert("RGBA")
    a16 = (np.asarray(grey, np.uint16) * 257).astype(np.uint16)
    im16 = Image.fromarray(a16)  # mode I;16
    huge = rgb.resize((4800, 3600))
    tiny = rgb.resize((12, 9))
    # EXIF orientation 6 (rotate 90 CW to display): store the pixels rotated the other way.
    stored = rgb.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    inputs = [
        grey,
        rgba,
        _png(rgba),
        im16,
        _png(im16),
        huge,
        tiny,
        buf.getvalue(),
        rgb.convert("P"),
        rgb.convert("CMYK"),
        np.asarray(rgb),
        a16,
        np.asarray(rgb).astype(np.float32) / 255.0,
    ]
    preds = predictor.predict(inputs)
    assert len(preds) == len(inputs)
    for p in preds:
        _check(p, predictor.classes)
    assert preds[1].label == ref.label
    assert preds[1].cell_box == ref.cell_box  # RGBA == RGB
    exif_p = preds[7]
    assert exif_p.label == ref.label
    assert exif_p.cell_box is not None
    assert preds[5].cell_box is not None
    assert preds[5].cell_box[2] > 320  # huge: box in input coordinates


def test_garbage_bytes_raise_decode_error(predictor):
    with pytest.raises(ImageDecodeError):
        predictor.predict_one(b"this is not an image")
    with pytest.raises(ImageDecodeError):
        predictor.predict_one(b"")
    assert issubclass(ImageDecodeError, ValueError)


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (its pixels are never there)."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_huge_and_multi_frame_images_are_refused_before_decoding(predictor, cell_images):
    with pytest.raises(
        ImageDecodeError, match="^the image is 10000x8000 pixels \\(80 MP\\); the limit is 50 MP$"
    ):
        predictor.predict_one(_png_declaring(10000, 8000))
    first = Image.open(io.BytesIO(cell_images["NEUTROPHIL_1"])).convert("RGB")
    frames = [first, first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]  # GIF merges identical frames
    for fmt in ("GIF", "TIFF"):
        buffer = io.BytesIO()
        frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:])
        with pytest.raises(ImageDecodeError, match="^the file holds 2 frames"):
            predictor.predict_one(buffer.getvalue())
        with pytest.raises(ImageDecodeError, match="^the file holds 2 frames"):
            predictor.predict_one(Image.open(io.BytesIO(buffer.getvalue())))


def test_card_serving_settings_are_checked(tmp_path, predictor, capsys):
    """A card the predictor cannot use is refused when the bundle loads, and ml.bundle will not
    version it (before: temperature 0 gave NaN confidences, a string threshold failed on every call)."""
    import json
    import shutil

    from ml import bundle
    from ml.predictor import DEFAULT_MODEL_PATH

    card = json.loads((DEFAULT_MODEL_PATH.parent / "model_card.json").read_text())
    for path in bundle.bundle_files(card, DEFAULT_MODEL_PATH).values():
        shutil.copy(path, tmp_path / path.name)
    no_crop = {k: v for k, v in card.items() if k != "crop"}
    for bad, message in (
        (card | {"temperature": 0}, "temperature must be > 0, got 0"),
        (card | {"temperature": float("nan")}, "temperature must be a finite number"),
        (card | {"tta_views": 3}, "tta_views must be 1, 2, 4 or 8, got 3"),
        (
            card | {"thresholds": {"min_confidence": "0.5"}},
            "thresholds.min_confidence must be a finite number",
        ),
        (
            card | {"thresholds": {"min_confidence": 1.5}},
            "thresholds.min_confidence must be in \\[0.0, 1.0\\]",
        ),
        (card | {"colour": {"file": "colour_model.npz", "weight": -1}}, "colour.weight must be in"),
        (card | {"crop": card["crop"] | {"method": "guess"}}, "crop.method must be ref_field or rbc_scale"),
        (card | {"crop": card["crop"] | {"field_rbc": 0}}, "crop.field_rbc must be > 0"),
        (no_crop, "crop must be an object"),
        (card | {"classes": ["EOSINOPHIL", "EOSINOPHIL"]}, "classes must be a list of distinct"),
    ):
        (tmp_path / "model_card.json").write_text(json.dumps(bad))
        with pytest.raises(ModelLoadError, match=message):
            load_predictor(tmp_path / DEFAULT_MODEL_PATH.name, backend="keras")
        assert bundle.main([str(tmp_path), "--write"]) == 2
        assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'model_card.json'}: ")
        assert json.loads((tmp_path / "model_card.json").read_text())["version"] == card["version"]
    # A valid but changed card: the check fails (exit 1) until --write versions it.
    (tmp_path / "model_card.json").write_text(json.dumps(card | {"tta_views": 8}))
    assert bundle.main([str(tmp_path)]) == 1
    assert bundle.main([str(tmp_path), "--write"]) == 0
    assert bundle.main([str(tmp_path)]) == 0


def test_model_load_errors(tmp_path):
    assert issubclass(ModelLoadError, RuntimeError)
    with pytest.raises(ModelLoadError, match="not found"):
        load_predictor(tmp_path / "missing.keras")
    bad = tmp_path / "corrupt.keras"
    bad.write_bytes(b"PK\x03\x04 definitely not a keras archive")
    (tmp_path / "model_card.json").write_text(
        '{"classes": ["A"], "version": "x", "input": {"input_size": 8}}'
    )
    with pytest.raises(ModelLoadError):
        load_predictor(bad)


def test_model_card_class_bias_is_checked(tmp_path, predictor):
    import json
    import shutil

    from ml.predictor import DEFAULT_MODEL_PATH

    shutil.copy(DEFAULT_MODEL_PATH, tmp_path / "m.keras")
    card = dict(predictor.card)
    for bad, msg in (
        ({"EOSINOPHIL": 1.0}, "one offset for each of"),
        (dict.fromkeys([*predictor.classes, "NOT_A_CLASS"], 0.0), "one offset for each of"),
        (dict.fromkeys(predictor.classes, "high"), "could not convert"),
        (dict.fromkeys(predictor.classes, float("nan")), "finite"),
    ):
        (tmp_path / "model_card.json").write_text(json.dumps(card | {"class_bias": bad}))
        with pytest.raises(ModelLoadError, match=msg):
            load_predictor(tmp_path / "m.keras", backend="keras")


def test_class_bias_shifts_probabilities_as_the_card_says(predictor, cell_images):
    """softmax(log p / T + b): a second predictor on the same network whose card adds offsets d gives
    probabilities proportional to the first one's times exp(d), and a large offset decides the class."""
    from ml import ood
    from ml.predictor import Predictor

    def with_bias(bias):
        card = predictor.card | {"class_bias": bias}
        p = Predictor(predictor.model, card, predictor.ood_stats, predictor.model_path, backend="keras")
        return p.predict_one(cell_images["LYMPHOCYTE_3"])

    base = predictor.predict_one(cell_images["LYMPHOCYTE_3"])
    delta = np.resize([0.5, -0.25, 1.0, -1.25], len(predictor.classes))
    now = ood.card_class_bias(predictor.card)
    shifted = with_bias({c: float(now[i] + delta[i]) for i, c in enumerate(predictor.classes)})
    expect = np.array([base.probabilities[c] for c in predictor.classes]) * np.exp(delta)
    got = np.array([shifted.probabilities[c] for c in predictor.classes])
    assert got == pytest.approx(expect / expect.sum(), rel=1e-4)
    assert shifted.label == predictor.classes[int(np.argmax(expect))]
    p = with_bias(dict.fromkeys(predictor.classes, 0.0) | {"MONOCYTE": 40.0})
    assert p.label == "MONOCYTE"
    assert p.confidence == pytest.approx(1.0)


def test_non_blood_images_are_flagged(predictor):
    from ml.tests.nonblood import nonblood_images

    imgs = nonblood_images()
    assert len(imgs) >= 20
    preds = predictor.predict(list(imgs.values()))
    missed = [n for n, p in zip(imgs, preds, strict=True) if p.status != "unidentified"]
    assert not missed, f"not flagged: {missed}"


def test_gradcam_png(predictor, cell_images):
    png = predictor.gradcam_png(cell_images["EOSINOPHIL_1"])
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG"
    assert im.size == (320, 240)
    png2 = predictor.gradcam_png(cell_images["EOSINOPHIL_1"], class_name="NEUTROPHIL")
    assert png2[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="unknown class 'NOT_A_CLASS'"):
        predictor.gradcam_png(cell_images["EOSINOPHIL_1"], class_name="NOT_A_CLASS")
    # By default it explains the class the predictor answers (views, colour opinion, calibration).
    for name in ("EOSINOPHIL_1", "MONOCYTE_2"):
        label = predictor.predict_one(cell_images[name]).label
        assert predictor.gradcam_png(cell_images[name]) == predictor.gradcam_png(cell_images[name], label)


def test_gradcam_map_matches_an_eager_reference(predictor, cell_images):
    """The compiled Grad-CAM computes what the textbook eager tape computes, for any class."""
    import keras
    import tensorflow as tf

    from ml.model import CONV_LAYER

    crop = predictor.prepare(cell_images["EOSINOPHIL_1"]).crop
    m = predictor.model
    gm = keras.Model(m.input, [m.get_layer(CONV_LAYER).output, m.output])
    maps = {}
    for asked in (None, 0, 3):
        with tf.GradientTape() as tape:
            conv, probs = gm(tf.constant(crop[None].astype(np.float32)), training=False)
            tape.watch(conv)
            k = int(tf.argmax(probs[0])) if asked is None else asked
            score = tf.math.log(probs[:, k] + 1e-9)
        grads = tape.gradient(score, conv)[0].numpy()
        ref = np.maximum((conv[0].numpy() * grads.mean(axis=(0, 1))).sum(-1), 0)
        ref = ref / (ref.max() + 1e-9)
        ref = Image.fromarray((ref * 255).astype(np.uint8)).resize(crop.shape[1::-1], Image.BICUBIC)
        ref = np.asarray(ref)
        cam, used = predictor.gradcam_map(crop, asked)
        assert used == k
        assert cam.shape == crop.shape[:2]
        assert np.abs(cam - ref / 255.0).max() <= 2 / 255
        maps[asked] = cam
    assert np.abs(maps[0] - maps[3]).max() > 0.1  # the map depends on the class asked for


def test_thread_safety(predictor, cell_images):
    from concurrent.futures import ThreadPoolExecutor

    imgs = list(cell_images.values())[:4]
    ref = [p.label for p in predictor.predict(imgs)]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda b: predictor.predict_one(b).label, imgs * 2))
    assert got == ref * 2
