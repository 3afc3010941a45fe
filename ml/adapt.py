"""Adapt a bundle to a new lab from the lab's own unlabelled cells: BatchNorm statistics (AdaBN).

A lab's stain and camera shift the statistics of the network's activations; the weights need not
change for the network to read the lab, if every BatchNorm layer sees the new lab's activations as
it saw the training labs'. Training keeps the BatchNorm layers frozen at their ImageNet statistics,
so the adaptation is relative: at each BatchNorm layer, in network order, the new lab's per-channel
mean and spread (measured with the layers before it already adapted) are mapped onto the training
labs' (measured once, on the unadapted network)::

    x' = (x - mean_new) / sd_new * sd_train + mean_train

folded into the layer's moving statistics, so the adapted bundle is an ordinary bundle (same
weights, the same serving path, LiteRT export included). No label is read: the new lab's crops are
canonical crops of its cells, whatever class. The bundle's OOD statistics, calibration and flag
thresholds stay the training labs'.

    python -m ml.adapt --bundle DIR --cache C --train-sources bccd --lab pbc --out DIR2 [--n 512]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

EPS_SD = 1e-3  # a channel whose spread is below this in either lab is left as it is


def _moments(fn, crops: np.ndarray, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and variance (float64) of each output of ``fn`` over ``crops``."""
    sums: list = []
    for i in range(0, len(crops), batch):
        outs = fn(crops[i : i + batch].astype(np.float32))
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for j, a in enumerate(outs):
            a = np.asarray(a, np.float64).reshape(-1, a.shape[-1])
            if len(sums) <= j:
                sums.append([0.0, 0.0, 0])
            sums[j][0] = sums[j][0] + a.sum(0)
            sums[j][1] = sums[j][1] + (a * a).sum(0)
            sums[j][2] += len(a)
    out = []
    for s, s2, n in sums:
        m = s / n
        out.append((m, np.maximum(s2 / n - m * m, 0.0)))
    return out


def adapt_batchnorm(model, train_crops: np.ndarray, lab_crops: np.ndarray, batch: int = 64, log=print) -> int:
    """Set every BatchNorm layer's moving statistics of ``model`` (in place) so that ``lab_crops``
    reach each layer's output as ``train_crops`` do; returns the number of layers adapted."""
    import keras

    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns:
        return 0
    source = _moments(keras.Model(model.inputs, [bn.input for bn in bns]), train_crops, batch)
    for k, (bn, (mu_s, var_s)) in enumerate(zip(bns, source, strict=True)):
        ((mu_t, var_t),) = _moments(keras.Model(model.inputs, bn.input), lab_crops, batch)
        mean_i = np.asarray(bn.moving_mean.numpy(), np.float64)
        var_i = np.asarray(bn.moving_variance.numpy(), np.float64)
        sd_i = np.sqrt(var_i + bn.epsilon)
        sd_s, sd_t = np.sqrt(var_s), np.sqrt(var_t)
        ok = (sd_s > EPS_SD) & (sd_t > EPS_SD)
        ratio = np.where(ok, sd_t / np.where(ok, sd_s, 1.0), 1.0)
        new_mean = np.where(ok, mu_t - (mu_s - mean_i) * ratio, mean_i)
        new_var = np.where(ok, np.maximum((sd_i * ratio) ** 2 - bn.epsilon, 0.0), var_i)
        bn.moving_mean.assign(new_mean.astype(np.float32))
        bn.moving_variance.assign(new_var.astype(np.float32))
        if k % 10 == 0 or k == len(bns) - 1:
            shift = np.abs(mu_t - mu_s).mean()
            log(f"  {bn.name}: mean shift {shift:.3f}, spread ratio {np.median(ratio):.3f}")
    return len(bns)


def main(argv: list[str] | None = None) -> int:
    from ml.cropcache import centre_field
    from ml.multifit import FitConfig, load_sides

    ap = argparse.ArgumentParser(prog="python -m ml.adapt", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="the bundle to adapt (its folder)")
    ap.add_argument("--cache", required=True, help="crop cache (ml.multilab cache)")
    ap.add_argument("--train-sources", required=True, help="the sources the bundle was trained on")
    ap.add_argument("--lab", required=True, help="the new lab's source in the cache")
    ap.add_argument("--out", required=True, help="folder of the adapted bundle")
    ap.add_argument("--n", type=int, default=512, help="crops of each side (default 512)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import keras

    src, out = Path(a.bundle), Path(a.out)
    if out.exists():
        print(f"{out} exists; refusing to overwrite", file=sys.stderr)
        return 2
    data = load_sides(Path(a.cache), FitConfig())  # the two-lab recipe's sides: val never read here
    meta, rng = data.meta, np.random.default_rng(a.seed)

    def pick(sources: list[str]) -> np.ndarray:
        rows = np.flatnonzero(data.train & np.isin(meta["source"], sources))
        return np.sort(rng.choice(rows, min(a.n, len(rows)), replace=False))

    train_rows, lab_rows = pick(a.train_sources.split(",")), pick([a.lab])
    shutil.copytree(src, out)
    card_path = out / "model_card.json"
    card = json.loads(card_path.read_text())
    model = keras.saving.load_model(out / card["model_file"], compile=False)
    n = adapt_batchnorm(
        model,
        centre_field(data.crops[train_rows], card["input"]["input_size"]),  # as the network reads them
        centre_field(data.crops[lab_rows], card["input"]["input_size"]),
    )
    model.save(out / card["model_file"])
    card["adaptation"] = {
        "method": "ml.adapt (BatchNorm statistics, relative to the training labs')",
        "from_version": card["version"],
        "lab": a.lab,
        "train_sources": a.train_sources.split(","),
        "n_train_crops": len(train_rows),
        "n_lab_crops": len(lab_rows),
        "seed": a.seed,
        "layers": n,
        "labels_read": False,
    }
    from ml import bundle

    card["version"] = bundle.bundle_version(card, out / card["model_file"])
    card_path.write_text(json.dumps(card, indent=2))
    print(f"adapted {n} BatchNorm layers; {out} version {card['version']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
