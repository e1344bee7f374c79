"""UnlearnCanvas's UA / IRA / CRA, the classifier-feature Frechet distance and the over-erasure rate, against
hand values and scipy."""

from collections import Counter

import numpy as np
import pytest

from obliviate.diffusion.metrics import (
    cross_domain_accuracy,
    factor_accuracy,
    frechet_distance,
    over_erasure_rate,
    unlearning_accuracy,
)


def test_ua_ira_cra_by_hand():
    assert unlearning_accuracy([3, 3, 1, 0], 3) == 0.5  # two of four no longer the target
    assert factor_accuracy([1, 2, 2], [1, 2, 0]) == pytest.approx(2 / 3)
    preds = {"object": [0, 0], "colour": [1, 2], "style": [0, 3]}
    wants = {"object": [5, 5], "colour": [1, 1], "style": [0, 3]}
    assert cross_domain_accuracy(preds, wants, "object") == 0.75  # colour 1/2, style 2/2


def test_frechet_distance_against_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # 1-D Gaussians: (mu1 - mu2)^2 + (s1 - s2)^2 on the sample moments
    x, y = rng.normal(0, 1, (5000, 1)), rng.normal(2, 3, (5000, 1))
    want = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert frechet_distance(x, y) == pytest.approx(want, rel=1e-6)
    # diagonal covariances: sum over dimensions of the 1-D formula, with sample covariances
    b = a * np.array([1.0, 2.0, 0.5]) + 1.0
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    from scipy.linalg import sqrtm

    want = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * sqrtm(sa @ sb).real)
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-9)


def test_frechet_distance_on_singular_covariances_retries_with_an_offset():
    """A feature that never varies (a saturated classifier output) makes S1 S2 exactly singular and scipy's sqrtm
    warns; like pytorch-fid, eps * I (1e-6) is then added to both covariances: no warning, a finite value. Checked
    against the same formula computed here with the offset."""
    import warnings

    from scipy.linalg import sqrtm

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 4)), rng.normal(1.0, 2.0, size=(20, 4))
    a[:, 0], b[:, 0] = 1.0, 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = frechet_distance(a, b)
    eps = 1e-6 * np.eye(4)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    want = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * sqrtm((sa + eps) @ (sb + eps)).real)
    assert np.isfinite(got) and got == pytest.approx(want, rel=1e-6)


def test_frechet_distance_with_fewer_images_than_features_projects_without_a_warning():
    """The demo's case: 24 generated images against a larger reference set, 256 classifier features. The sample
    covariance of 24 images has rank 23 < 256, and sqrtm warned "matrix is singular". Both sets are now projected
    onto the top 12 (= 24 // 2) principal axes of the pooled features: no warning, and the value is Eq. 6 computed
    by hand in those axes."""
    import warnings

    from scipy.linalg import sqrtm

    from obliviate.diffusion.metrics import fd_dims

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(24, 256)), rng.normal(0.3, 1.5, size=(300, 256))
    assert fd_dims(24, 300, 256) == 12 and fd_dims(600, 512, 256) == 256
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any LinAlgWarning / RuntimeWarning fails the test
        got = frechet_distance(a, b)
    pooled = np.concatenate([a, b])
    centre = pooled.mean(0)
    _, _, vt = np.linalg.svd(pooled - centre, full_matrices=False)
    pa, pb = (a - centre) @ vt[:12].T, (b - centre) @ vt[:12].T
    sa, sb = np.cov(pa, rowvar=False), np.cov(pb, rowvar=False)
    assert np.linalg.matrix_rank(sa) == 12  # full rank where the distance is computed
    want = ((pa.mean(0) - pb.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * sqrtm(sa @ sb).real)
    assert got == pytest.approx(want, rel=1e-9) and got > 0
    # the same set against itself is still 0, and a shifted copy still measures the shift's projected part
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_over_erasure_rate_by_hand():
    wants = {"object": [0, 1, 2, -1], "colour": [-1, 3, 3, 4]}
    preds = {"object": [0, 1, 0, 9], "colour": [7, 3, 3, 1]}
    assert over_erasure_rate(preds, wants) == 0.5  # prompt 2 misses its object, prompt 3 its colour
    base = {"object": [0, 1, 2, 9], "colour": [7, 3, 3, 2]}  # the base model already missed prompt 3
    assert over_erasure_rate(preds, wants, base) == pytest.approx(1 / 3)


def test_prompt_subsets_are_balanced_over_labels_not_strided():
    """A concept's 24 target prompts are 6 colours x 4 styles: every 6th prompt (the old pick) kept 2 styles of 4.
    The balanced subset of 4 covers 4 styles and 4 colours, keeps the set's order, and is one subset per seed."""
    from obliviate.diffusion.evaluate import SampleConfig, balanced_subset
    from obliviate.diffusion.world import ImageWorldSpec, build_image_world, concept_splits

    world = build_image_world(ImageWorldSpec(seed=0, per_combination=2))
    target = concept_splits(world, "object", "star")["target"]
    assert len({target[i]["style"] for i in range(0, 24, 6)}) == 2  # the aliasing that the balanced pick avoids
    for seed in (0, 1, 2):
        got = SampleConfig(max_prompts=4, seed=seed).pick(target)
        assert len({r["style"] for r in got}) == 4 and len({r["colour"] for r in got}) == 4
        assert [target.index(r) for r in got] == sorted(target.index(r) for r in got)
        assert got == balanced_subset(target, 4, seed)
    others = balanced_subset(concept_splits(world, "object", "star")["unrelated"], 24)
    assert max(Counter(r["object"] for r in others).values()) - min(Counter(r["object"] for r in others).values()) <= 1
    assert SampleConfig(max_prompts=30).pick(target) == target and SampleConfig().pick(target) == target
