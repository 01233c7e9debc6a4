"""FID, KID and precision/recall/density/coverage: equal to independent implementations, and right on
identical and on disjoint real image sets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import features, to_uint8


def _features(n, d, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + shift


def test_prdc_equals_the_prdc_package():
    prdc_ref = pytest.importorskip("prdc")
    from trainer.geneval.prdc import prdc

    for n_real, n_fake, shift in ((40, 50, 0.0), (60, 45, 0.7), (30, 30, 3.0)):
        real, fake = _features(n_real, 16, 0), _features(n_fake, 16, 1, shift)
        ours = prdc(real, fake, k=5, block=17)  # blocks smaller than the sets: the blocked path
        ref = prdc_ref.compute_prdc(real.numpy(), fake.numpy(), nearest_k=5)
        for key in ("precision", "recall", "density", "coverage"):
            assert ours[key] == pytest.approx(float(ref[key]), abs=1e-9), (key, shift)
    with pytest.raises(ValueError, match="more than 5"):
        prdc(real[:5], fake)


def test_kid_equals_an_independent_mmd():
    """torchmetrics' KID (one subset of the whole sets) = the unbiased MMD^2 with scikit-learn's cubic
    polynomial kernel, and our own mmd2_poly."""
    from sklearn.metrics.pairwise import polynomial_kernel

    from trainer.geneval.fidelity import kid, mmd2_poly

    real, fake = _features(30, 12, 0), _features(30, 12, 1, 0.3)
    x, y = real.double().numpy(), fake.double().numpy()
    kw = dict(degree=3, gamma=1.0 / x.shape[1], coef0=1.0)
    kxx, kyy, kxy = polynomial_kernel(x, x, **kw), polynomial_kernel(y, y, **kw), polynomial_kernel(x, y, **kw)
    m = len(x)
    ref = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    assert ref > 0.01
    mean, std = kid(real, fake, subsets=1, subset_size=30)
    assert mean == pytest.approx(ref, rel=1e-6) and std == 0
    assert mmd2_poly(real, fake) == pytest.approx(ref, rel=1e-9)
    mean, std = kid(real, fake, subsets=20, subset_size=10)  # subsets: near the full-set value
    assert abs(mean - ref) < 3 * std + 0.05


@pytest.mark.parametrize("n", [20, 80])  # n <= d (SVD of the cross term) and n > d (eigenvalues)
def test_frechet_distance_equals_torchmetrics(n):
    from torchmetrics.image.fid import FrechetInceptionDistance

    from trainer.geneval.fidelity import frechet_distance

    class Identity(torch.nn.Module):
        num_features = 32

        def forward(self, x):
            return x

    real, fake = _features(n, 32, 0), _features(n + 3, 32, 1, 0.4) * 1.3
    metric = FrechetInceptionDistance(feature=Identity())
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    assert frechet_distance(real, fake) == pytest.approx(float(metric.compute()), rel=1e-4)
    assert abs(frechet_distance(real, real)) < 1e-6


def test_identical_sets_and_disjoint_distributions(faces, lite0):
    """Faces against the same faces: FID ~ 0, KID ~ 0, precision = recall = 1. Other faces score well;
    the LFW subset's non-face patches (a disjoint distribution) score worse on every fidelity metric."""
    from trainer.geneval.fidelity import fidelity
    from trainer.geneval.prdc import prdc

    real, other, photos = features(lite0, faces[:40]), features(lite0, faces[50:90]), features(lite0, faces[100:140])
    same = fidelity(real, real, n_boot=20)
    near, far = fidelity(real, other, n_boot=20), fidelity(real, photos, n_boot=20)
    # KID of a set with itself is slightly negative at small n (the unbiased estimator pairs each image with itself)
    assert abs(same["fid"]) < 1e-6 and abs(same["kid"]) < 0.1 * far["kid"]
    assert same["fid_ci95"][0] <= same["fid_ci95"][1] and "below 2,048" in same["warning"]
    p = prdc(real, real)
    assert p["precision"] == 1.0 and p["recall"] == 1.0 and p["coverage"] == 1.0
    assert far["fid"] > near["fid"] > 0 and far["kid"] > near["kid"]
    assert far["fid_ci95"][0] > near["fid_ci95"][1]  # the intervals separate the two
    pn, pf = prdc(real, other), prdc(real, photos)
    for key in ("precision", "recall", "density", "coverage"):
        assert pf[key] < pn[key], key


@pytest.mark.slow
def test_identical_and_disjoint_on_the_fid_inception_network(faces):
    from trainer.geneval.extractors import resolve
    from trainer.geneval.fidelity import fidelity
    from trainer.geneval.prdc import prdc

    inc = resolve("inception")
    real = inc(to_uint8(faces[:24]))
    photos = inc(to_uint8(faces[100:124]))  # non-face patches
    other = inc(to_uint8(faces[50:74]))
    same = fidelity(real, real, n_boot=10)
    far = fidelity(real, photos, n_boot=0)
    assert abs(same["fid"]) < 1e-3 and abs(same["kid"]) < 0.1 * far["kid"]
    assert prdc(real, real)["precision"] == 1.0 and prdc(real, real)["recall"] == 1.0
    near = fidelity(real, other, n_boot=0)
    assert far["fid"] > near["fid"] and far["kid"] > near["kid"]
    pn, pf = prdc(real, other), prdc(real, photos)
    assert all(pf[k] < pn[k] for k in ("precision", "recall", "density", "coverage"))
