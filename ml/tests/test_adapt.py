"""ml.adapt: BatchNorm statistics adapted to a new lab, relative to the training labs'. (The command
line, on a tiny trained bundle: ``test_multilab.test_multilab_cache_fit_and_serve_end_to_end``.)"""

import numpy as np

from ml.adapt import adapt_batchnorm


def _model():
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3), name="image")
    y = keras.layers.Conv2D(4, 3, use_bias=False)(x)
    bn = keras.layers.BatchNormalization(name="bn")
    y = bn(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    model = keras.Model(x, keras.layers.Dense(2)(y))
    # frozen statistics that are not the data's (as ImageNet's are not a lab's)
    bn.moving_mean.assign(np.array([5.0, -3.0, 1.0, 0.0], np.float32))
    bn.moving_variance.assign(np.array([400.0, 90.0, 2000.0, 10.0], np.float32))
    bn.gamma.assign(np.array([1.0, 0.5, 2.0, 1.5], np.float32))
    bn.beta.assign(np.array([0.1, -0.2, 0.0, 0.3], np.float32))
    return model


def test_a_lab_whose_pixels_differ_by_a_gain_and_offset_is_read_as_the_training_lab():
    rng = np.random.default_rng(0)
    train = rng.uniform(0, 255, (64, 8, 8, 3)).astype(np.float32)
    lab = 0.6 * train + 30.0  # the same cells, paler and brighter
    model = _model()
    before_train = np.asarray(model(train))
    assert np.abs(np.asarray(model(lab)) - before_train).max() > 0.05  # unadapted: read differently
    assert adapt_batchnorm(model, train, lab, batch=16, log=lambda *_: None) == 1
    np.testing.assert_allclose(np.asarray(model(lab)), before_train, atol=1e-3)


def test_adapting_to_the_training_lab_itself_changes_nothing():
    rng = np.random.default_rng(1)
    train = rng.uniform(0, 255, (48, 8, 8, 3)).astype(np.float32)
    model = _model()
    before = np.asarray(model(train))
    adapt_batchnorm(model, train, train, batch=16, log=lambda *_: None)
    np.testing.assert_allclose(np.asarray(model(train)), before, atol=1e-4)

