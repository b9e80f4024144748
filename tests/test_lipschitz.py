"""Spectral normalization of operators and exact norm certificates (eq. 4.6-4.9, Remark 4.9)."""

import math

import pytest
import torch
from torch import nn

import invertible as inv

CONVS = [
    ("zero-pad stride 2", lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1), (3, 9, 9)),
    ("zero-pad stride 2 even input", lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1), (2, 8, 8)),
    ("no pad dilation 2", lambda: nn.Conv2d(2, 3, 3, dilation=2), (2, 9, 9)),
    ("5x5 stride 3", lambda: nn.Conv2d(2, 2, 5, stride=3, padding=2), (2, 10, 10)),
    ("circular", lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), (2, 6, 6)),
    ("reflect", lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 6, 6)),
    ("conv1d stride 2", lambda: nn.Conv1d(2, 3, 5, stride=2, padding=2), (2, 17)),
    ("conv1d same", lambda: nn.Conv1d(2, 3, 4, padding="same"), (2, 11)),
]


def dense_norm(module, shape):
    """||A||_2 of the layer's linear part, materialised by pushing the identity basis through the module
    itself (bias removed): independent of the library's operator code."""
    n = math.prod(shape)
    basis = torch.eye(n).reshape(n, *shape)
    with torch.no_grad():
        columns = module(basis) - module(torch.zeros(1, *shape))
    return float(torch.linalg.matrix_norm(columns.reshape(n, -1), ord=2))


@pytest.mark.parametrize("name,factory,shape", CONVS, ids=[c[0] for c in CONVS])
def test_operator_norm_is_exact(name, factory, shape):
    conv = factory()
    assert math.isclose(inv.operator_norm(conv, shape), dense_norm(conv, shape), rel_tol=1e-9)


@pytest.mark.parametrize("name,factory,shape", CONVS, ids=[c[0] for c in CONVS])
def test_upper_bound_dominates_exact_norm(name, factory, shape):
    conv = factory()
    if conv.padding_mode == "reflect":
        pytest.skip("the FFT upper bound covers zero and circular padding")
    assert inv.operator_norm_upper_bound(conv, shape) >= dense_norm(conv, shape) * (1 - 1e-9)


def test_operator_norm_lanczos_path_for_large_inputs(monkeypatch):
    import invertible.norms

    monkeypatch.setattr(invertible.norms, "DENSE_LIMIT", 100)  # force the matrix-free path on a small problem
    monkeypatch.setattr(invertible.norms, "GRAM_DENSE_LIMIT", 10)  # ... and ARPACK rather than a dense eigh
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    shape = (3, 12, 12)
    assert invertible.norms.norm_method(conv, shape) == "lanczos"
    exact = dense_norm(conv, shape)
    assert math.isclose(inv.operator_norm(conv, shape, rtol=1e-10), exact, rel_tol=1e-7)


@pytest.mark.parametrize("side", [6, 20], ids=["dense-eigh", "arpack"])
def test_top_singular_triplet_is_repeatable_where_the_top_pair_is_not_unique(side):
    """A conv with every singular value equal (one centre tap: ``A = 0.5 I``) breaks Lanczos down at once and
    makes ARPACK ask for a random restart vector: scipy's ``svds`` drew it from fresh OS entropy, so every call
    returned another top pair (and a classifier's converge_spectral_norms another ``u``, failing bit-for-bit
    resume tests about one run in four). Repeated calls must give the same triplet, bit for bit."""
    from invertible.norms import GRAM_DENSE_LIMIT, LinearOperator, top_singular_triplet

    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 0.5
    shape = (1, side, side)
    assert (side * side > GRAM_DENSE_LIMIT) == (side == 20)
    op = LinearOperator(conv)
    runs = [top_singular_triplet(op, conv.weight, shape, rtol=1e-8) for _ in range(4)]
    for sigma, u, v in runs:
        assert sigma == pytest.approx(0.5, rel=1e-12)
        torch.testing.assert_close(op.apply(conv.weight, u), sigma * v, rtol=0, atol=1e-12)
        assert torch.equal(u, runs[0][1]) and torch.equal(v, runs[0][2]) and sigma == runs[0][0]


@pytest.mark.parametrize("name,factory,shape", CONVS, ids=[c[0] for c in CONVS])
def test_adjoint_is_the_transpose(name, factory, shape):
    from invertible.norms import LinearOperator

    conv = factory()
    op = LinearOperator(conv)
    u = torch.randn(2, *shape)
    v = torch.randn_like(op.apply(conv.weight, u))
    lhs = (op.apply(conv.weight, u) * v).sum()
    rhs = (u * op.adjoint(conv.weight, v, shape)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-10)


@pytest.mark.parametrize("name,factory,shape", CONVS, ids=[c[0] for c in CONVS])
@pytest.mark.parametrize("coeff", [0.5, 0.9])
def test_tolerance_mode_enforces_coeff(name, factory, shape, coeff):
    conv = factory()
    with torch.no_grad():
        conv.weight.mul_(5)  # make sure normalization is active
    inv.spectral_norm(conv, coeff, atol=1e-7, rtol=1e-6)
    conv(torch.randn(2, *shape))
    assert dense_norm(conv, shape) <= coeff * (1 + 1e-3)
    assert dense_norm(conv, shape) >= coeff * (1 - 1e-2)  # and it is not over-shrunk


def test_linear_spectral_norm_and_few_iterations_converge_over_training():
    lin = inv.spectral_norm(nn.Linear(20, 30), 0.7, n_power_iterations=1)
    with torch.no_grad():
        lin.parametrizations.weight.original.mul_(4)
    for _ in range(100):
        lin(torch.randn(4, 20))
    assert math.isclose(inv.operator_norm(lin), 0.7, rel_tol=1e-3)


def test_input_shape_change_reinitializes_vectors():
    conv = inv.spectral_norm(nn.Conv2d(2, 2, 3, padding=1), 0.9)
    conv(torch.randn(1, 2, 4, 4))
    sn = conv.parametrizations.weight[0]
    assert tuple(sn.u.shape) == (1, 2, 4, 4)
    conv(torch.randn(1, 2, 6, 6))
    assert tuple(sn.u.shape) == (1, 2, 6, 6)
    assert tuple(sn.input_shape.tolist()) == (2, 6, 6)


def test_state_dict_round_trip_before_any_forward():
    a = inv.spectral_norm(nn.Conv2d(2, 3, 3, padding=1), 0.9)
    a(torch.randn(2, 2, 5, 5))
    b = inv.spectral_norm(nn.Conv2d(2, 3, 3, padding=1), 0.9)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.randn(2, 2, 5, 5)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("coeff", [0, -0.5, 1, 1.5, float("nan"), "a"])
def test_coeff_outside_unit_interval_is_refused(coeff):
    with pytest.raises(ValueError, match="coeff"):
        inv.spectral_norm(nn.Linear(2, 2), coeff)


def test_spectral_norm_refuses_unsupported_modules():
    with pytest.raises(TypeError, match="supports"):
        inv.spectral_norm(nn.Conv3d(1, 1, 3), 0.9)


@pytest.mark.parametrize("seed", range(5))
def test_lipschitz_constant_is_a_certified_upper_bound(seed):
    torch.manual_seed(seed)
    g = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ELU(), nn.Conv2d(4, 2, 3, stride=1, padding=1))
    shape = (2, 5, 5)
    lip = inv.lipschitz_constant(g, shape)
    assert math.isclose(lip, dense_norm(g[0], shape) * dense_norm(g[2], (4, 5, 5)), rel_tol=1e-9)
    a, b = torch.randn(200, *shape), torch.randn(200, *shape)
    b = a + 1e-2 * b
    ratios = (g(a) - g(b)).flatten(1).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
    assert ratios.max() <= lip


def test_lipschitz_constant_refuses_unknown_modules():
    g = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with pytest.raises(ValueError, match="BatchNorm1d"):
        inv.lipschitz_constant(g)


def test_operator_norm_needs_input_shape_for_unseen_conv():
    with pytest.raises(ValueError, match="input_shape"):
        inv.operator_norm(nn.Conv2d(1, 1, 3))


def test_converge_spectral_norms_after_weight_updates():
    """The power-iteration vectors lag behind optimizer steps; converging afterwards restores ||A|| <= c."""
    torch.manual_seed(0)
    layers = nn.Sequential(
        inv.spectral_norm(nn.Conv2d(2, 8, 3, padding=1), 0.5),
        nn.ELU(),
        inv.spectral_norm(nn.Conv2d(8, 2, 3, padding=1), 0.5),
    )
    layers(torch.randn(4, 2, 6, 6))
    with torch.no_grad():  # what an optimizer step does to the raw weights
        for layer in (layers[0], layers[2]):
            w = layer.parametrizations.weight.original
            w.add_(0.5 * w.abs().mean() * torch.randn_like(w))
    layers.eval()
    assert max(inv.operator_norm(layers[0]), inv.operator_norm(layers[2])) > 0.5 * 1.01  # the lag is real
    assert inv.converge_spectral_norms(layers) == 2
    for layer in (layers[0], layers[2]):
        assert inv.operator_norm(layer) <= 0.5 * (1 + 1e-4)


def test_zero_initialised_weight_is_normalised_once_it_grows():
    lin = nn.Linear(4, 4)
    nn.init.zeros_(lin.weight)
    inv.spectral_norm(lin, 0.9)
    lin(torch.randn(2, 4))  # initialisation sees W = 0
    with torch.no_grad():
        lin.parametrizations.weight.original.copy_(5 * torch.eye(4))
    for _ in range(3):
        lin(torch.randn(2, 4))
    assert inv.operator_norm(lin) <= 0.9 * (1 + 1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_torch_func_transforms_see_a_fixed_normalization(training):
    """jvp / jacrev through a spectrally normalized conv work without frozen_spectral_norm() and leave the
    power-iteration state alone; the Jacobian is that of the normalized weight."""
    from torch.func import jacrev, jvp

    torch.manual_seed(0)
    conv = inv.spectral_norm(torch.nn.Conv2d(2, 3, 3, padding=1), coeff=0.5)
    x = torch.randn(1, 2, 4, 4)
    conv(x)  # first forward: records the input shape, initializes the vectors
    conv.train(training)
    state = {k: v.clone() for k, v in conv.state_dict().items()}
    jac = jacrev(conv)(x)
    _, tangent = jvp(conv, (x,), (torch.ones_like(x),))
    for k, v in conv.state_dict().items():
        assert torch.equal(v, state[k]), k
    w = conv.parametrizations.weight.original
    sigma = conv.parametrizations.weight[0].estimate(w)
    w_hat = (w / torch.clamp(sigma / 0.5, min=1.0)).detach()
    expected = torch.autograd.functional.jacobian(lambda z: torch.nn.functional.conv2d(z, w_hat, None, padding=1), x)
    torch.testing.assert_close(jac, expected)
    torch.testing.assert_close(tangent, torch.nn.functional.conv2d(torch.ones_like(x), w_hat, None, padding=1))


def test_local_lipschitz_is_the_jacobian_norm_and_below_the_certified_bound():
    """Per sample, local_lipschitz equals the largest singular value of the autograd Jacobian, and it never
    exceeds the certified Lip(g) (eq. 4.6)."""
    torch.manual_seed(0)
    g = nn.Sequential(
        inv.spectral_norm(nn.Conv2d(2, 4, 3, padding=1), coeff=0.9), nn.ELU(),
        inv.spectral_norm(nn.Conv2d(4, 2, 3, padding=1), coeff=0.9),
    )
    x = torch.randn(5, 2, 4, 4) * 2
    g(x)
    inv.converge_spectral_norms(g)
    g.eval()
    local = inv.local_lipschitz(g, x, n_iter=200)
    assert local.shape == (5,)
    for b in range(5):
        jac = torch.autograd.functional.jacobian(lambda z: g(z.unsqueeze(0))[0], x[b]).reshape(32, 32)
        assert local[b].item() == pytest.approx(torch.linalg.matrix_norm(jac, 2).item(), rel=1e-6)
    assert local.max() <= inv.lipschitz_constant(g, (2, 4, 4)) * (1 + 1e-6)
    with pytest.raises(ValueError, match="batch"):
        inv.local_lipschitz(g, torch.randn(3))


def test_frozen_forward_on_a_new_input_shape_still_normalizes():
    """A layer met with a new input size inside frozen_spectral_norm() (or a torch.func transform) must not fall
    back to the raw weight: it estimates sigma for that size without touching its buffers."""
    torch.manual_seed(0)
    conv = inv.spectral_norm(nn.Conv2d(2, 3, 3, padding=1), coeff=0.5)
    with torch.no_grad():
        conv.parametrizations.weight.original.mul_(10)  # far from contractive before normalization
    conv(torch.randn(1, 2, 8, 8))
    conv.eval()
    state = {k: v.clone() for k, v in conv.state_dict().items()}

    def linear_part(z):  # the operator on 4x4 inputs, without the bias
        return (conv(z.reshape(1, 2, 4, 4)) - conv.bias.view(1, -1, 1, 1)).reshape(-1)

    with inv.frozen_spectral_norm():
        jac = torch.autograd.functional.jacobian(linear_part, torch.zeros(32))
    for k, v in conv.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert 0.5 * (1 - 1e-2) <= torch.linalg.matrix_norm(jac, 2) <= 0.5 * (1 + 1e-3)


def test_recorded_shape_follows_forward_and_load_state_dict():
    """The host-side copy of input_shape (read on every forward without a device sync) never goes stale."""
    torch.manual_seed(0)
    a = inv.spectral_norm(nn.Conv2d(2, 3, 3, padding=1), coeff=0.5)
    b = inv.spectral_norm(nn.Conv2d(2, 3, 3, padding=1), coeff=0.5)
    a(torch.randn(1, 2, 6, 6))
    b(torch.randn(1, 2, 4, 4))
    sn_b = b.parametrizations.weight[0]
    assert sn_b.recorded_shape == (2, 4, 4)
    b.load_state_dict(a.state_dict())
    assert sn_b.recorded_shape == (2, 6, 6) == tuple(sn_b.input_shape.tolist())
    torch.testing.assert_close(b(torch.ones(1, 2, 6, 6)), a(torch.ones(1, 2, 6, 6)))


def _stall_near_second_direction(sn, A_rows, shape):
    """Put the power iteration's vectors on the second right singular vector of the dense operator ``A``
    (plus a 1e-7 component along the top one): the plateau where a change-based stopping rule stops."""
    _, _, Vh = torch.linalg.svd(A_rows)
    u = Vh[1] + 1e-7 * Vh[0]
    u = (u / u.norm()).reshape(1, *shape)
    v = (A_rows @ u.flatten()).reshape(sn.v.shape)
    sn.u.copy_(u)
    sn.v.copy_(v / v.norm())


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_converge_finds_the_norm_from_vectors_stalled_below_it(kind):
    """Training can leave the vectors near a lower singular direction; converging must still reach ||A||
    (before the fix it stopped at once at sigma_2: 0.96 against ||W|| = 1.0 for the linear case)."""
    from invertible.lipschitz import converge_spectral_norms, spectral_norm, spectral_norm_of
    from invertible.norms import operator_norm

    torch.manual_seed(0)
    if kind == "linear":
        layer, shape = torch.nn.Linear(2, 32).double(), (2,)
        U, _ = torch.linalg.qr(torch.randn(32, 2, dtype=torch.float64))
        V, _ = torch.linalg.qr(torch.randn(2, 2, dtype=torch.float64))
        with torch.no_grad():
            layer.weight.copy_(U @ torch.diag(torch.tensor([1.0, 0.96], dtype=torch.float64)) @ V.T)
    else:
        layer, shape = torch.nn.Conv2d(1, 2, 3, padding=1).double(), (1, 4, 4)
        with torch.no_grad():
            layer.weight.mul_(3.0)  # ||A|| above coeff, so that the normalization acts
    m = spectral_norm(layer, coeff=0.9)
    m(torch.randn(3, *shape, dtype=torch.float64))
    sn = spectral_norm_of(m)
    weight = m.parametrizations.weight.original.detach()
    eye = torch.eye(int(torch.tensor(shape).prod()), dtype=torch.float64).reshape(-1, *shape)
    A = torch.stack([sn._op.apply(weight, e[None]).flatten() for e in eye], 1)  # dense operator, (out, in)
    _stall_near_second_direction(sn, A, shape)
    exact = torch.linalg.matrix_norm(A, 2).item()
    assert exact > 0.95
    assert sn.estimate(weight).item() < exact * (1 - 1e-3)  # the stall is real
    converge_spectral_norms(m)
    assert float(sn.sigma) == pytest.approx(exact, rel=1e-5)
    assert operator_norm(m, shape) == pytest.approx(0.9, rel=1e-5)  # the normalized operator meets coeff


def test_converge_reaches_a_conv_norm_whose_top_singular_values_nearly_coincide():
    """A 1-d averaging convolution (kernel [1, 1, 1], zero padding) on 256 samples is a Toeplitz operator with
    singular values 1 + 2 cos(k pi / 257): sigma_2 / sigma_1 = 0.99985, so a power iteration's change-based
    stopping rule (rtol 1e-6) stopped 5e-4 below ||A|| (2.99832 vs 2.99985); Lanczos reaches it (trained
    convolutions of fig4.2 stayed up to 0.2 % short before it)."""
    from invertible.lipschitz import converge_spectral_norms, spectral_norm, spectral_norm_of

    layer = torch.nn.Conv1d(1, 1, 3, padding=1, bias=False).double()
    with torch.no_grad():
        layer.weight.fill_(1.0)
    m = spectral_norm(layer, coeff=0.9)
    m(torch.randn(2, 1, 256, dtype=torch.float64))
    exact = 1 + 2 * math.cos(math.pi / 257)
    converge_spectral_norms(m)
    sn = spectral_norm_of(m)
    assert float(sn.sigma) == pytest.approx(exact, rel=1e-7)
    assert float(sn.sigma) <= exact * (1 + 1e-12)  # <v, A u> is a lower bound
