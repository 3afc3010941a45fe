"""The EfficientNet-Lite0 port reproduces ImageNet predictions."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def imagenet_model():
    from ml.backbones import build_lite0_imagenet

    return build_lite0_imagenet(224)


def _top5(model, rgb):
    from PIL import Image

    x = np.asarray(Image.fromarray(rgb).resize((224, 224), Image.BILINEAR), np.float32)[None]
    p = model(x, training=False).numpy()[0]
    assert abs(p.sum() - 1) < 1e-4
    return set(np.argsort(-p)[:5].tolist())


def test_chelsea_is_a_cat(imagenet_model):
    from skimage import data

    assert _top5(imagenet_model, data.chelsea()) & {281, 282, 283, 284, 285}


def test_coffee_is_espresso_or_cup(imagenet_model):
    from skimage import data

    assert _top5(imagenet_model, data.coffee()) & {967, 968}


def test_weights_reader_has_all_tensors():
    from ml.backbones import lite0_state_dict

    sd = lite0_state_dict()
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_fc.weight"].shape == (1000, 1280)


def test_restricted_unpickler_rejects_foreign_globals(tmp_path):
    import pickle

    from ml._torchpickle import load_legacy_state_dict

    bad = tmp_path / "bad.pth"
    with open(bad, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(obj, f, protocol=2)
        f.write(b"\x80\x02cos\nsystem\nq\x00.")
    with pytest.raises(pickle.UnpicklingError):
        load_legacy_state_dict(bad)
