"""Validation grouping by source field, the split, and the masked, centred cell crop."""

import numpy as np

CLASSES = ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]


def _fields(rng, n_fields, dim=32, cells=2):
    """Fake ORIGINAL features: every field has `cells` located cells x 8 dihedral views."""
    base = rng.normal(size=(n_fields, cells, 8, dim))
    feats = base.reshape(-1, dim)
    numbers = np.repeat(np.arange(100, 100 + n_fields), cells * 8)
    return base, feats, numbers


def test_group_by_original_matches_copies_to_their_field_within_the_class():
    from ml.data import group_by_original

    rng = np.random.default_rng(0)
    base, feats, numbers = _fields(rng, 4)
    categories = {100: "EOSINOPHIL", 101: "EOSINOPHIL", 102: "NEUTROPHIL", 103: "NEUTROPHIL, EOSINOPHIL"}
    cats = [categories[n] for n in numbers]
    # Training copies: a random view of the first cell of their field, plus noise.
    truth = np.array([100] * 6 + [101] * 5 + [102] * 7 + [103] * 4)
    labels = np.array([0] * 11 + [3] * 7 + [3] * 4)
    views = rng.integers(0, 8, len(truth))
    x = base[truth - 100, 0, views] + rng.normal(scale=0.3, size=(len(truth), base.shape[-1]))
    # A NEUTROPHIL copy that looks most like an EOSINOPHIL-only field must not be matched there.
    x[12] = base[0, 0, 0] * 0.6 + base[2, 0, 1] * 0.4
    src = group_by_original(x, labels, CLASSES, (feats, numbers, cats), threshold=0.99)
    assert src.tolist() == truth.tolist()


def test_group_split_keeps_whole_groups_on_one_side():
    from ml.data import group_split

    labels = np.repeat([0, 1, 2, 3], 50)
    groups = np.arange(200) // 5  # 40 groups of 5
    val = group_split(groups, labels, 0.2, seed=1)
    for g in np.unique(groups):
        assert len(set(val[groups == g].tolist())) == 1
    assert [int(val[labels == c].sum()) for c in range(4)] == [10, 10, 10, 10]


def test_group_split_keeps_a_group_of_every_class_for_training():
    import pytest

    from ml.data import SplitError, group_split

    labels = np.repeat([0, 1], [6, 4])
    groups = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    val = group_split(groups, labels, 0.9, seed=3)  # asks for nearly everything
    for c in (0, 1):
        assert 0 < val[labels == c].sum() < (labels == c).sum()
    with pytest.raises(SplitError, match="^MONOCYTE has 2 image"):
        group_split(
            np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 0, 0, 1, 1]), 0.2, 1, ["EOSINOPHIL", "MONOCYTE"]
        )


def test_mask_background_fades_corners_to_grey_and_keeps_the_centre():
    from ml.locate import MASK_FILL, mask_background

    crop = np.full((64, 64, 3), 200, np.uint8)
    out = mask_background(crop, 0.3)
    assert out.dtype == np.uint8
    assert out.shape == crop.shape
    assert out[32, 32].tolist() == [200, 200, 200]
    assert out[0, 0].tolist() == [MASK_FILL] * 3
    row = out[32, 32:, 0].astype(int)
    assert np.all(np.diff(row) <= 0)  # monotone fade from the centre outwards


def _field_with_nucleus(cx, cy):
    rgb = np.full((240, 320, 3), (230, 200, 200), np.uint8)  # pale pink background
    yy, xx = np.mgrid[0:240, 0:320]
    rgb[(xx - cx) ** 2 + (yy - cy) ** 2 < 14**2] = (90, 40, 160)  # purple nucleus
    return rgb


def test_masked_crop_stays_centred_on_a_nucleus_at_the_image_edge():
    from ml.locate import crop_cell

    rgb = _field_with_nucleus(20, 25)
    centred, box = crop_cell(rgb, side=128, out_size=128, mask_radius=52)
    assert box is not None
    purple = (centred[..., 2].astype(int) - centred[..., 1]) > 80
    ys, xs = np.nonzero(purple)
    assert abs(xs.mean() - 63.5) < 2
    assert abs(ys.mean() - 63.5) < 2
    assert centred[0, 0].tolist() == [128, 128, 128]
    shifted, _ = crop_cell(rgb, side=128, out_size=128)  # unmasked: window shifted inside the image
    ys, xs = np.nonzero((shifted[..., 2].astype(int) - shifted[..., 1]) > 80)
    assert xs.mean() < 30
    assert ys.mean() < 35
