"""Scoring kernels vs numpy references written from the formulas in PAPER.md "Scoring rules".

Mahalanobis references use np.linalg.inv(Sigma) explicitly and loop over rows; Sigma is the
pooled within-domain covariance (m2_f + m2_r) / (n_f + n_r) or the retain covariance m2_r / n_r,
computed from the raw rows with numpy.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf

from distunlearn.core.covariance import CovarianceEstimate, CovarianceSpec
from distunlearn.core.scoring import FEATURE_METHODS, KERNEL_METHODS, METHODS, ScoringModel, validate_methods
from distunlearn.core.stats import GaussianStats
from distunlearn.errors import ConfigError

#: The kernels of feature vectors (lr_ngram scores n-gram counts: tests/test_text.py).
FEATURE_KERNELS = tuple(m for m in FEATURE_METHODS if m != "random")

D = 6


# --------------------------------------------------------------------------- data and references
def make_domains(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forget rows, retain rows (different means and covariances) and rows to score."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(D, D)) / np.sqrt(D) + np.eye(D)
    forget = rng.normal(size=(150, D)) @ a + rng.normal(scale=2.0, size=D)
    retain = rng.normal(size=(400, D)) @ (1.3 * a.T) + rng.normal(scale=2.0, size=D)
    x = np.vstack([forget[:100], retain[:100], rng.normal(scale=4.0, size=(50, D))])
    return forget, retain, x


def pooled_cov(f: np.ndarray, r: np.ndarray) -> np.ndarray:
    fc, rc = f - f.mean(axis=0), r - r.mean(axis=0)
    return (fc.T @ fc + rc.T @ rc) / (len(f) + len(r))


def sigma_for(source: str, f: np.ndarray, r: np.ndarray) -> np.ndarray:
    return pooled_cov(f, r) if source == "pooled" else np.cov(r, rowvar=False, bias=True)


def d_maha(x: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """sqrt((x - mu)^T Sigma^-1 (x - mu)) row by row, with an explicit inverse."""
    inv = np.linalg.inv(sigma)
    return np.array([np.sqrt((row - mu) @ inv @ (row - mu)) for row in x])


def d_cos(x: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """1 - x.mu / (|x||mu|) row by row; 1 for a zero row."""
    out = []
    for row in x:
        nx, nm = np.linalg.norm(row), np.linalg.norm(mu)
        out.append(1.0 if nx == 0.0 or nm == 0.0 else 1.0 - float(row @ mu) / (nx * nm))
    return np.array(out)


def reference_scores(method: str, x: np.ndarray, f: np.ndarray, r: np.ndarray, sigma: np.ndarray,
                     cos_center: np.ndarray | None = None) -> np.ndarray:
    mu1, mu2 = f.mean(axis=0), r.mean(axis=0)
    c = np.zeros(x.shape[1]) if cos_center is None else cos_center
    if method == "mu2":
        return np.array([np.linalg.norm(row - mu2) for row in x])
    if method == "coreset":
        return -np.array([np.linalg.norm(row - mu1) for row in x])
    if method == "maha_mu2":
        return d_maha(x, mu2, sigma)
    if method == "lr_maha":
        return d_maha(x, mu2, sigma) - d_maha(x, mu1, sigma)
    if method == "lr_gauss":
        return 0.5 * (d_maha(x, mu2, sigma) ** 2 - d_maha(x, mu1, sigma) ** 2)
    if method == "cos_mu2":
        return d_cos(x - c, mu2 - c)
    if method == "lr_cos":
        return d_cos(x - c, mu2 - c) - d_cos(x - c, mu1 - c)
    raise AssertionError(method)


def build(f: np.ndarray, r: np.ndarray, covariance: str = "full", covariance_rank: int = 64,
          **kw: object) -> ScoringModel:
    spec = CovarianceSpec(kind=covariance, rank=covariance_rank)
    return ScoringModel.build(GaussianStats.from_array(f), GaussianStats.from_array(r), covariance=spec, **kw)


# --------------------------------------------------------------------------- kernels
def test_kernel_methods_are_all_methods_but_random() -> None:
    assert set(KERNEL_METHODS) == set(METHODS) - {"random"}
    assert set(KERNEL_METHODS) == {"mu2", "maha_mu2", "cos_mu2", "lr_maha", "lr_cos", "lr_gauss", "coreset",
                                   "lr_ngram"}
    assert set(FEATURE_KERNELS) == set(KERNEL_METHODS) - {"lr_ngram"}


@pytest.mark.parametrize("source", ["pooled", "retain"])
@pytest.mark.parametrize("method", FEATURE_KERNELS)
def test_kernel_matches_reference(method: str, source: str) -> None:
    """Each kernel, full covariance on well-conditioned data, vs the row-loop reference."""
    f, r, x = make_domains(1)
    sigma = sigma_for(source, f, r)
    assert np.linalg.cond(sigma) < 1e4  # premise: "full" is kept
    model = build(f, r, covariance_source=source, covariance="full")
    assert model.covariance.kind == "full"
    got = model.score(x, (method,))
    assert set(got) == {method}
    assert got[method].shape == (len(x),) and got[method].dtype == np.float64
    np.testing.assert_allclose(got[method], reference_scores(method, x, f, r, sigma), rtol=1e-9, atol=1e-9)


def test_pooled_and_retain_sources_differ() -> None:
    """Guard that the covariance_source parametrisation is meaningful for these data."""
    f, r, x = make_domains(1)
    a = build(f, r, covariance_source="pooled").score(x, ("maha_mu2",))["maha_mu2"]
    b = build(f, r, covariance_source="retain").score(x, ("maha_mu2",))["maha_mu2"]
    assert np.max(np.abs(a - b)) > 1e-2


def test_all_methods_in_one_call_match_reference() -> None:
    """Asking for every method at once (and 'random', which the kernel skips) gives the
    same values as the references; 'random' is not produced."""
    f, r, x = make_domains(2)
    sigma = sigma_for("pooled", f, r)
    got = build(f, r).score(x.astype(np.float32), FEATURE_METHODS)
    x64 = x.astype(np.float32).astype(np.float64)
    assert set(got) == set(FEATURE_KERNELS)
    for m in FEATURE_KERNELS:
        np.testing.assert_allclose(got[m], reference_scores(m, x64, f, r, sigma), rtol=1e-9, atol=1e-9,
                                   err_msg=m)


@pytest.mark.parametrize("method", ["cos_mu2", "lr_cos"])
def test_cosine_pooled_mean_center(method: str) -> None:
    """cosine_center="pooled_mean": x and both means are centred on the count-weighted pooled
    mean (= mean of all forget and retain rows) before the cosine."""
    f, r, x = make_domains(3)
    center = np.vstack([f, r]).mean(axis=0)
    got = build(f, r, cosine_center="pooled_mean").score(x, (method,))[method]
    ref = reference_scores(method, x, f, r, sigma_for("pooled", f, r), cos_center=center)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    # and it is not the uncentred score
    uncentred = reference_scores(method, x, f, r, sigma_for("pooled", f, r))
    assert np.max(np.abs(got - uncentred)) > 1e-2


def test_cosine_zero_row_has_distance_one() -> None:
    """A zero feature vector has cosine distance 1 to both means, so lr_cos = 0."""
    f, r, x = make_domains(4)
    x = np.vstack([np.zeros(D), x[:5]])
    got = build(f, r).score(x, ("cos_mu2", "lr_cos"))
    assert got["cos_mu2"][0] == 1.0
    assert got["lr_cos"][0] == 0.0
    assert np.all(np.isfinite(got["cos_mu2"]))
    np.testing.assert_allclose(got["cos_mu2"][1:], d_cos(x[1:], r.mean(axis=0)), rtol=1e-10)


def test_cosine_hand_computed() -> None:
    """2-d case by hand: mu2 = (1, 0): x = (0, 2) -> 1, x = (-3, 0) -> 2, x = (1, 1) -> 1 - 1/sqrt 2."""
    rng = np.random.default_rng(5)
    noise = rng.normal(size=(200, 2))
    noise -= noise.mean(axis=0)  # exact-ish zero mean so mu2 = (1, 0)
    r = noise + np.array([1.0, 0.0])
    f = rng.normal(size=(50, 2)) + np.array([0.0, 5.0])
    got = build(f, r).score(np.array([[0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]]), ("cos_mu2",))["cos_mu2"]
    np.testing.assert_allclose(got, [1.0, 2.0, 1.0 - 1.0 / np.sqrt(2.0)], atol=1e-12)


def test_mu2_and_coreset_hand_computed() -> None:
    """mu2 = ||x - mu2|| and coreset = -||x - mu1|| with 3-4-5 triangles."""
    f = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [-2.0, -2.0]])  # mean (0, 0)
    r = np.array([[3.0, 4.0], [5.0, 4.0], [3.0, 6.0], [1.0, 2.0]])  # mean (3, 4)
    got = build(f, r).score(np.array([[0.0, 0.0], [6.0, 8.0]]), ("mu2", "coreset"))
    np.testing.assert_allclose(got["mu2"], [5.0, 5.0], atol=1e-12)
    np.testing.assert_allclose(got["coreset"], [0.0, -10.0], atol=1e-12)


def test_lr_gauss_is_log_density_ratio_up_to_constant() -> None:
    """lr_gauss(x_i) - lr_gauss(x_0) = [log N(x_i; mu1, S) - log N(x_i; mu2, S)] - [same at x_0],
    with the Gaussian log densities written out by hand (S = pooled covariance)."""
    f, r, x = make_domains(6)
    s = pooled_cov(f, r)
    inv = np.linalg.inv(s)
    _, logdet = np.linalg.slogdet(s)

    def log_normal(row: np.ndarray, mu: np.ndarray) -> float:
        diff = row - mu
        return -0.5 * (diff @ inv @ diff) - 0.5 * logdet - 0.5 * D * np.log(2 * np.pi)

    ratio = np.array([log_normal(row, f.mean(axis=0)) - log_normal(row, r.mean(axis=0)) for row in x])
    got = build(f, r).score(x, ("lr_gauss",))["lr_gauss"]
    np.testing.assert_allclose(got - got[0], ratio - ratio[0], rtol=1e-9, atol=1e-8)


def test_lr_gauss_is_stable_far_from_origin() -> None:
    """Features offset by 1e4: the linear form still matches the centred reference
    1/2 [d_M(x,mu2)^2 - d_M(x,mu1)^2] computed on the unshifted data (shift-invariant)."""
    f, r, x = make_domains(7)
    shift = 1e4
    got = build(f + shift, r + shift).score(x + shift, ("lr_gauss",))["lr_gauss"]
    ref = reference_scores("lr_gauss", x, f, r, pooled_cov(f, r))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_maha_with_ledoit_wolf_matches_sklearn_sigma() -> None:
    """covariance="ledoit_wolf", pooled: Sigma = sklearn ledoit_wolf on the per-domain-centred
    rows (assume_centered=True); maha_mu2 / lr_maha use it."""
    f, r, x = make_domains(8)
    y = np.vstack([f - f.mean(axis=0), r - r.mean(axis=0)])
    sigma = ledoit_wolf(y, assume_centered=True)[0]
    model = build(f, r, covariance="ledoit_wolf")
    got = model.score(x, ("maha_mu2", "lr_maha"))
    for m in ("maha_mu2", "lr_maha"):
        np.testing.assert_allclose(got[m], reference_scores(m, x, f, r, sigma), rtol=1e-8, err_msg=m)


def test_maha_with_diagonal_retain() -> None:
    """covariance="diagonal", source "retain": Sigma = diag(np.var(retain))."""
    f, r, x = make_domains(9)
    sigma = np.diag(np.var(r, axis=0))
    got = build(f, r, covariance_source="retain", covariance="diagonal").score(x, ("maha_mu2",))
    np.testing.assert_allclose(got["maha_mu2"], d_maha(x, r.mean(axis=0), sigma), rtol=1e-9)


def test_full_falls_back_when_few_rows() -> None:
    """n_f + n_r <= d with covariance="full" still scores (LW fallback), with finite values."""
    rng = np.random.default_rng(10)
    f, r = rng.normal(size=(3, 8)), rng.normal(size=(4, 8)) + 1.0
    model = build(f, r, covariance="full")
    assert model.covariance.kind == "ledoit_wolf"
    y = np.vstack([f - f.mean(axis=0), r - r.mean(axis=0)])
    sigma = ledoit_wolf(y, assume_centered=True)[0]
    x = rng.normal(size=(20, 8))
    got = model.score(x, ("lr_gauss",))["lr_gauss"]
    np.testing.assert_allclose(got, reference_scores("lr_gauss", x, f, r, sigma), rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------- structured covariances
def lowrank_sigma(s: np.ndarray, rank: int) -> np.ndarray:
    """V diag(lambda) V^T + sigma^2 (I - V V^T) from np.linalg.eigh of s (top ``rank``)."""
    w, u = np.linalg.eigh(s)
    lam, v = w[::-1][:rank], u[:, ::-1][:, :rank]
    sigma2 = (np.trace(s) - lam.sum()) / (len(s) - rank)
    return v @ np.diag(lam) @ v.T + sigma2 * (np.eye(len(s)) - v @ v.T)


def solve_scores(method: str, x: np.ndarray, mu1: np.ndarray, mu2: np.ndarray,
                 sigma: np.ndarray) -> np.ndarray:
    """Mahalanobis scores through np.linalg.solve(Sigma, x - mu), all rows at once."""
    def d2(mu: np.ndarray) -> np.ndarray:
        diff = x - mu
        return np.einsum("ij,ji->i", diff, np.linalg.solve(sigma, diff.T))

    if method == "maha_mu2":
        return np.sqrt(d2(mu2))
    if method == "lr_maha":
        return np.sqrt(d2(mu2)) - np.sqrt(d2(mu1))
    assert method == "lr_gauss"
    return 0.5 * (d2(mu2) - d2(mu1))


@pytest.mark.parametrize("shift", [0.0, 1e6])
@pytest.mark.parametrize("source", ["pooled", "retain"])
@pytest.mark.parametrize("kind", ["diagonal", "lowrank"])
def test_structured_kernels_match_dense_solve(kind: str, source: str, shift: float) -> None:
    """diagonal (Sigma = diag(np.var)) and lowrank r = 2 (from np.linalg.eigh): maha_mu2, lr_maha
    and lr_gauss equal np.linalg.solve(Sigma, x - mu) on the unshifted data, also when every
    feature is offset by 1e6 (the scores are shift-invariant; expanding ||x - mu||^2 as
    ||x||^2 - 2 x.mu + ||mu||^2 would lose about 1e-4 there, centring keeps about 1e-10)."""
    f, r, x = make_domains(13)
    s = sigma_for(source, f, r)
    sigma = np.diag(np.diag(s)) if kind == "diagonal" else lowrank_sigma(s, 2)
    model = build(f + shift, r + shift, covariance_source=source, covariance=kind, covariance_rank=2)
    assert model.covariance.kind == kind
    got = model.score(x + shift, ("maha_mu2", "lr_maha", "lr_gauss"))
    tol = 1e-9 if shift == 0.0 else 1e-8
    for m in ("maha_mu2", "lr_maha", "lr_gauss"):
        ref = solve_scores(m, x, f.mean(axis=0), r.mean(axis=0), sigma)
        np.testing.assert_allclose(got[m], ref, rtol=tol, atol=tol * np.abs(ref).max(), err_msg=m)
    # and the structure matters: the full covariance scores differently
    full = solve_scores("maha_mu2", x, f.mean(axis=0), r.mean(axis=0), s)
    assert np.max(np.abs(got["maha_mu2"] - full)) > 1e-2


def test_lowrank_in_high_dimension_matches_dense_solve() -> None:
    """d = 120, r = 7, features offset by 1e3: a regime where the part of x - mu outside the
    top-r subspace carries most of ||x - mu||^2."""
    rng = np.random.default_rng(14)
    d = 120
    a = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    f = rng.normal(size=(300, d)) @ a + rng.normal(size=d)
    r = rng.normal(size=(700, d)) @ a + rng.normal(size=d)
    x = np.vstack([f[:40], r[:40]])
    model = build(f + 1e3, r + 1e3, covariance="lowrank", covariance_rank=7)
    got = model.score(x + 1e3, ("maha_mu2", "lr_maha", "lr_gauss"))
    sigma = lowrank_sigma(pooled_cov(f, r), 7)
    for m in ("maha_mu2", "lr_maha", "lr_gauss"):
        ref = solve_scores(m, x, f.mean(axis=0), r.mean(axis=0), sigma)
        np.testing.assert_allclose(got[m], ref, rtol=1e-7, atol=1e-7 * np.abs(ref).max(), err_msg=m)


def test_lowrank_rank_d_minus_1_scores_like_full() -> None:
    """r = d - 1 makes Sigma = S, so every kernel method scores as with covariance="full"."""
    f, r, x = make_domains(15)
    low = build(f, r, covariance="lowrank", covariance_rank=D - 1).score(x, FEATURE_KERNELS)
    full = build(f, r, covariance="full").score(x, FEATURE_KERNELS)
    for m in FEATURE_KERNELS:
        np.testing.assert_allclose(low[m], full[m], rtol=1e-8, atol=1e-9, err_msg=m)


@pytest.mark.parametrize("kind", ["diagonal", "lowrank"])
def test_structured_model_is_small_and_needs_no_dense_matrix(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """d = 300: the pickled (broadcast) model holds no d x d array (one would be 720 kB), and
    building and scoring never ask for the dense matrix."""
    rng = np.random.default_rng(16)
    d, rank = 300, 5
    f = rng.normal(size=(400, d)) + 1.0
    r = rng.normal(size=(500, d)) * 1.5

    def no_dense(self: CovarianceEstimate) -> np.ndarray:
        raise AssertionError("dense covariance requested")

    monkeypatch.setattr(CovarianceEstimate, "matrix", property(no_dense))
    model = build(f, r, covariance=kind, covariance_rank=rank)
    model.score(r[:50], FEATURE_KERNELS)
    size = len(pickle.dumps(model))
    assert size < 20 * d * 8 + (d * rank * 8 if kind == "lowrank" else 0), size


def test_full_model_still_holds_the_dense_whitener() -> None:
    """Guard for the size test above: a full-covariance model is at least d x d doubles."""
    rng = np.random.default_rng(16)
    d = 300
    model = build(rng.normal(size=(400, d)), rng.normal(size=(500, d)), covariance="full")
    assert len(pickle.dumps(model)) > d * d * 8


def test_uses_covariance() -> None:
    assert ScoringModel.uses_covariance(("mu2", "lr_gauss"))
    assert ScoringModel.uses_covariance(("maha_mu2",)) and ScoringModel.uses_covariance(("lr_maha",))
    assert not ScoringModel.uses_covariance(("mu2", "cos_mu2", "lr_cos", "coreset", "random"))


# --------------------------------------------------------------------------- validation
def test_validate_methods_accepts_known() -> None:
    assert validate_methods(["lr_gauss", "random"]) == ("lr_gauss", "random")


@pytest.mark.parametrize("bad,needle", [
    (("mu2", "mahalanobis"), "'mahalanobis'"),
    (("MU2",), "'MU2'"),
    (("mu2", "lr_gauss", "mu2"), "twice"),
    ((), "no scoring method"),
])
def test_validate_methods_rejects(bad: tuple[str, ...], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        validate_methods(bad)


def test_score_rejects_unknown_method() -> None:
    f, r, x = make_domains(11)
    with pytest.raises(ConfigError, match="'nope'"):
        build(f, r).score(x, ("mu2", "nope"))


@pytest.mark.parametrize("kw,needle", [
    ({"covariance_source": "forget"}, "covariance_source 'forget'"),
    ({"cosine_center": "retain_mean"}, "cosine_center 'retain_mean'"),
])
def test_build_rejects_unknown_options(kw: dict[str, str], needle: str) -> None:
    f, r, _ = make_domains(12)
    with pytest.raises(ConfigError, match=needle):
        build(f, r, **kw)
