"""Every residual function ``g`` of an i-ResNet block ``F(x) = x + g(x)`` built in the project (eq. 4.5).

A residual function is a chain of (spectrally normalized) linear operators and 1-Lipschitz elementwise
activations, ``g = W_L o phi o ... o phi o W_1``; with ``||W_i||_2 <= c`` (eq. 4.9) it has ``Lip(g) <= c^L < 1``
(eq. 4.6) and ``I + g`` is invertible (Theorem 4.1). Shapes: ``(B, *shape) -> (B, *shape)``.

* :func:`lipschitz_mlp`: vector flows (Residual Flows' MLP; fi-i-ResNet's dense blocks).
* :func:`lipschitz_convnet`: 3x3 -> phi -> 1x1 -> phi -> 3x3 (Appendix A.2; fi-i-ResNet's conv blocks; the
  digits i-ResNet of Figs. 4.4 / 5.3 via :func:`residual_function`).
* :func:`bottleneck_g`: the pre-activation bottleneck of the i-ResNet classifier (Appendix A.1).
* :func:`lipschitz_dense_mlp`, :func:`lipschitz_dense_convnet`: i-DenseNet residual functions ``g = W o h_L o ...
  o h_1`` with dense layers ``h_l(x) = [eta_1 x, eta_2 CLipSwish(W_l x)]`` (:mod:`invertible.dense`;
  Perugachi-Diaz et al. 2021): ``Lip(h_l) <= sqrt(eta_1^2 + eta_2^2 c^2) <= 1``, so ``Lip(g) <= c``.
* :class:`ConditionalLipschitzMLP`: ``g(x, c)``, contractive in ``x`` for every context ``c`` (conditional flows).

Layers are created in a fixed order (documented per function) so that seeded weights stay identical.

References: Behrmann et al. (2019) "Invertible Residual Networks"; Chen et al. (2019) "Residual Flows".
"""

from __future__ import annotations

import torch
from torch import nn

from invertible.activations import (
    activation_lipschitz,
    activation_value_and_derivative,
    make_activation,
    width_factor,
)
from invertible.dense import DenseLayer
from invertible.lipschitz import spectral_norm

__all__ = [
    "lipschitz_mlp", "lipschitz_convnet", "residual_function", "bottleneck_g", "lipschitz_dense_mlp",
    "lipschitz_dense_convnet", "count_parameters", "ConditionalLipschitzMLP",
]


def count_parameters(module: nn.Module) -> int:
    """The number of trainable scalars of a module (what "equal parameters" compares)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def lipschitz_mlp(
    dims: list[int],
    coeff: float = 0.9,
    activation: str = "lipswish",
    n_power_iterations: int = 1,
    preact: bool = True,
    beta: float = 4.0,
    orthogonal: bool = True,
    last_scale: float = 1.0,
) -> nn.Sequential:
    """``g = W_L o phi o ... o phi o W_1`` (or ``W_L o phi o ... o W_1 o phi`` with ``preact``, as in Residual
    Flows) with spectrally normalized ``||W_i||_2 <= coeff`` (eq. 4.5, 4.9), so ``Lip(g) <= coeff^L`` (eq. 4.6).
    ``dims = [d, h_1, ..., d]``; inputs ``(B, d)``.

    Initialization: orthogonal weights (all singular values equal, so normalization does not start rank-deficient),
    LipSwish slope ``beta`` (4: sharper bends than the swish default 1, which trains much faster on 2-D data),
    and optionally the last layer scaled by ``last_scale`` (< 1: blocks start near the identity; on 8gaussians
    the default 1 trained slightly faster). Per layer: [activation], Linear, [orthogonal init], spectral norm.
    """
    if len(dims) < 2 or any(int(k) < 1 for k in dims):
        raise ValueError(f"dims must list >= 2 positive layer widths, got {dims}")
    layers: list[nn.Module] = []
    n = len(dims) - 1
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        if i or preact:
            layers.append(make_activation(activation, beta))
        lin = nn.Linear(a, b)
        with torch.no_grad():
            if orthogonal:
                nn.init.orthogonal_(lin.weight)
            if i == n - 1 and last_scale != 1.0:
                lin.weight.mul_(last_scale)
                lin.bias.zero_()
        layers.append(spectral_norm(lin, coeff=coeff, n_power_iterations=n_power_iterations))
    return nn.Sequential(*layers)


def lipschitz_convnet(
    channels: int,
    hidden: int,
    coeff: float = 0.9,
    activation: str = "lipswish",
    n_power_iterations: int = 1,
    atol: float | None = None,
    rtol: float | None = None,
) -> nn.Sequential:
    """The i-ResNet image block ``g``: 3x3 -> phi -> 1x1 -> phi -> 3x3 convolutions (Appendix A.2), each with
    operator spectral norm ``<= coeff`` (eq. 4.8-4.9; ``atol``/``rtol``: tolerance-mode power iteration);
    shapes ``(B, C, H, W) -> (B, C, H, W)``. The three convolutions are created first, then normalized."""
    convs = [
        nn.Conv2d(channels, hidden, 3, padding=1),
        nn.Conv2d(hidden, hidden, 1),
        nn.Conv2d(hidden, channels, 3, padding=1),
    ]
    sn = {"coeff": coeff, "n_power_iterations": n_power_iterations, "atol": atol, "rtol": rtol}
    layers: list[nn.Module] = []
    for i, c in enumerate(convs):
        if i:
            layers.append(make_activation(activation))
        layers.append(spectral_norm(c, **sn))
    return nn.Sequential(*layers)


def residual_function(channels: int, hidden: int, coeff: float, tol: float = 1e-3) -> nn.Sequential:
    """``g = A3 ELU(A2 ELU(A1 x))`` with 3x3, 1x1, 3x3 spectrally normalized convolutions (eq. 4.5): the digits
    i-ResNet's block, :func:`lipschitz_convnet` with ELU and one power iteration in tolerance mode.

    Tolerance mode (Residual Flows' ``atol = rtol = 1e-3``): with a single power iteration per step the estimate
    lags behind fast-moving weights and the exact norms end up above ``coeff``.
    """
    return lipschitz_convnet(channels, hidden, coeff, "elu", 1, atol=tol, rtol=tol)


def bottleneck_g(
    channels: int,
    hidden: int,
    *,
    coeff: float | None,
    n_power_iterations: int = 1,
    batchnorm: bool = False,
) -> nn.Sequential:
    """The residual function ``g`` of eq. 4.5 in the classifier: ``[BN] ELU conv3x3 [BN] ELU conv1x1 [BN] ELU
    conv3x3``, i.e. ``g(x) = A_3 phi(A_2 phi(A_1 phi(x) + b_1) + b_2) + b_3`` (Appendix A.1).

    Maps ``(B, channels, H, W) -> (B, channels, H, W)`` through ``hidden`` channels. With ``coeff`` each conv is
    spectrally normalized on its operator (eq. 4.9; ``None``: the unconstrained twin); with ``batchnorm`` a
    ``BatchNorm2d`` precedes every ELU.
    """
    if channels < 1 or hidden < 1:
        raise ValueError(f"channels and hidden must be >= 1, got channels={channels}, hidden={hidden}")
    convs = [
        nn.Conv2d(channels, hidden, 3, padding=1),
        nn.Conv2d(hidden, hidden, 1),
        nn.Conv2d(hidden, channels, 3, padding=1),
    ]
    layers: list[nn.Module] = []
    for conv, c_in in zip(convs, (channels, hidden, hidden), strict=True):
        if batchnorm:
            layers.append(nn.BatchNorm2d(c_in))
        layers.append(nn.ELU())
        if coeff is not None:
            conv = spectral_norm(conv, coeff=coeff, n_power_iterations=n_power_iterations)
        layers.append(conv)
    return nn.Sequential(*layers)


def lipschitz_dense_mlp(
    dim: int,
    growth: list[int] | tuple[int, ...],
    coeff: float = 0.9,
    activation: str = "clipswish",
    n_power_iterations: int = 1,
    beta: float = 1.0,
    orthogonal: bool = True,
) -> nn.Sequential:
    """i-DenseNet residual function on ``R^d``: ``g = W_out o h_L o ... o h_1`` with dense layers ``h_l(x) =
    [eta_1 x, eta_2 phi(W_l x)]`` (:class:`~invertible.dense.DenseLayer`), ``W_l`` a spectrally normalized
    ``Linear(c_l, growth[l])`` and ``phi`` = CLipSwish (``c_{l+1} = c_l + 2 growth[l]``; an elementwise
    ``activation`` adds ``growth[l]``), ``W_out`` a normalized ``Linear(c_{L+1}, d)``; all ``||W||_2 <= coeff``.

    Lipschitz bound: ``Lip(h_l) <= sqrt(eta_1^2 + eta_2^2 coeff^2) <= 1`` and ``Lip(g) <= coeff * prod_l
    Lip(h_l) <= coeff < 1`` (eq. 4.6), so ``I + g`` is invertible (Theorem 4.1). Inputs ``(B, d)``. Layers are
    created in order: per dense layer Linear, [orthogonal init], spectral norm, activation; then ``W_out``.
    """
    if dim < 1 or not growth or any(int(k) < 1 for k in growth):
        raise ValueError(f"need dim >= 1 and >= 1 positive growth widths, got dim={dim}, growth={list(growth)}")
    layers: list[nn.Module] = []
    c = int(dim)
    for k in growth:
        lin = nn.Linear(c, int(k))
        if orthogonal:
            with torch.no_grad():
                nn.init.orthogonal_(lin.weight)
        f = nn.Sequential(spectral_norm(lin, coeff=coeff, n_power_iterations=n_power_iterations),
                          make_activation(activation, beta, concatenated=True))
        layers.append(DenseLayer(f))
        c += width_factor(activation) * int(k)
    out = nn.Linear(c, int(dim))
    if orthogonal:
        with torch.no_grad():
            nn.init.orthogonal_(out.weight)
    layers.append(spectral_norm(out, coeff=coeff, n_power_iterations=n_power_iterations))
    return nn.Sequential(*layers)


def lipschitz_dense_convnet(
    channels: int,
    growth: int,
    depth: int = 2,
    coeff: float = 0.9,
    activation: str = "clipswish",
    n_power_iterations: int = 1,
) -> nn.Sequential:
    """i-DenseNet image residual function: ``depth`` dense layers ``h_l(x) = [eta_1 x, eta_2 CLipSwish(A_l x)]``
    with 3x3 convolutions ``A_l: c_l -> growth`` channels (``c_{l+1} = c_l + 2 growth``), then a 3x3 convolution
    back to ``channels``; every operator spectrally normalized to ``||A||_2 <= coeff`` (eq. 4.8-4.9), so
    ``Lip(g) <= coeff`` as for :func:`lipschitz_dense_mlp`. Shapes ``(B, C, H, W) -> (B, C, H, W)``."""
    if channels < 1 or growth < 1 or depth < 1:
        raise ValueError(f"need channels, growth, depth >= 1, got {channels}, {growth}, {depth}")
    sn = {"coeff": coeff, "n_power_iterations": n_power_iterations}
    layers: list[nn.Module] = []
    c = int(channels)
    for _ in range(int(depth)):
        f = nn.Sequential(spectral_norm(nn.Conv2d(c, int(growth), 3, padding=1), **sn),
                          make_activation(activation, concatenated=True))
        layers.append(DenseLayer(f))
        c += width_factor(activation) * int(growth)
    layers.append(spectral_norm(nn.Conv2d(c, int(channels), 3, padding=1), **sn))
    return nn.Sequential(*layers)


class ConditionalLipschitzMLP(nn.Module):
    """A residual function ``g(x, c)`` that is contractive in ``x`` for every context ``c``:

        h_1 = W_1 x + b_1(c),   h_{k+1} = W_{k+1} phi(h_k) + b_{k+1}(c),   g(x, c) = h_L,

    with spectrally normalized ``||W_k||_2 <= coeff`` (eq. 4.9), a 1-Lipschitz activation ``phi`` and the shifts
    ``(b_1(c), ..., b_L(c)) = e(c)`` from an *unconstrained* embedding MLP ``e`` of the context.

    Lipschitz argument. Fix ``c``. Each map ``h_k -> h_{k+1} = W_{k+1} phi(h_k) + b_{k+1}(c)`` is ``phi`` followed by
    an affine map whose linear part is ``W_{k+1}``; the shift ``b_{k+1}(c)`` cancels in every difference
    ``h_{k+1}(x) - h_{k+1}(x')``. Hence, as in eq. 4.6,

        Lip_x(g(., c)) <= prod_k ||W_k||_2 * prod Lip(phi) <= coeff^L < 1      for every c,

    whatever ``e`` is, so ``x -> x + g(x, c)`` is invertible for every ``c`` (Theorem 4.1) and its inverse is the
    fixed point of ``x = y - g(x, c)`` (Algorithm 1, Lemma 4.5). The bound depends on the ``W_k`` only:
    :meth:`x_path` is the chain ``W_1, phi, ..., W_L`` that :func:`invertible.lipschitz_constant` certifies.
    The context may move the *operating point* of every activation (a shift per layer), never the slope budget.

    Args:
        dims: ``[d, h_1, ..., h_{L-1}, d]``. context_dim: ``d_c``. embed_hidden: hidden widths of ``e``
            (SiLU; its last layer starts at zero, so the block starts unconditional).
        coeff, activation, beta, n_power_iterations: as in :func:`lipschitz_mlp` (no pre-activation).

    Shapes: ``x (B, d)``, ``c (B, d_c)`` -> ``(B, d)``. :meth:`forward_and_jacobian` also returns the exact
    ``J_x g`` of shape ``(B, d, d)`` (``jac[b, i, :] = d g / d x_i``), by forward propagation as in
    :class:`~invertible.ForwardJacobianLogDet`.
    """

    def __init__(
        self,
        dims: list[int],
        context_dim: int,
        embed_hidden: tuple[int, ...] | list[int] = (64,),
        coeff: float = 0.9,
        activation: str = "lipswish",
        beta: float = 16.0,
        n_power_iterations: int = 1,
    ):
        super().__init__()
        if len(dims) < 2 or any(int(k) < 1 for k in dims) or dims[0] != dims[-1]:
            raise ValueError(f"dims must list >= 2 positive widths starting and ending with d, got {dims}")
        if int(context_dim) < 1 or any(int(k) < 1 for k in embed_hidden):
            raise ValueError(f"need context_dim >= 1 and positive embed_hidden, got {context_dim}, {embed_hidden}")
        self.dims, self.context_dim = [int(k) for k in dims], int(context_dim)
        linears = []
        for a, b in zip(self.dims[:-1], self.dims[1:], strict=True):
            lin = nn.Linear(a, b)
            with torch.no_grad():
                nn.init.orthogonal_(lin.weight)
            linears.append(spectral_norm(lin, coeff=coeff, n_power_iterations=n_power_iterations))
        self.linears = nn.ModuleList(linears)
        self.activations = nn.ModuleList(make_activation(activation, beta) for _ in self.dims[2:])
        widths = [self.context_dim, *(int(k) for k in embed_hidden), sum(self.dims[1:])]
        embed: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            if i:
                embed.append(nn.SiLU())
            embed.append(nn.Linear(a, b))
        with torch.no_grad():
            embed[-1].weight.zero_()
            embed[-1].bias.zero_()
        self.embed = nn.Sequential(*embed)

    def x_path(self) -> nn.Sequential:
        """The x-path ``W_1, phi, W_2, ..., W_L`` (the same modules, not copies): what ``Lip_x(g)`` is
        certified on, e.g. ``invertible.lipschitz_constant(g.x_path())``."""
        layers: list[nn.Module] = []
        for k, lin in enumerate(self.linears):
            if k:
                layers.append(self.activations[k - 1])
            layers.append(lin)
        return nn.Sequential(*layers)

    def lipschitz_bound_of_activations(self) -> float:
        """``prod Lip(phi)`` over the activations of the x-path (1 for LipSwish, ELU, tanh, softplus)."""
        out = 1.0
        for m in self.activations:
            out *= float(activation_lipschitz(m))
        return out

    def _check(self, x: torch.Tensor, c: torch.Tensor) -> None:
        if c.dim() != 2 or c.shape[1] != self.context_dim or c.shape[0] != x.shape[0]:
            raise ValueError(f"ConditionalLipschitzMLP: the context must have shape (B, {self.context_dim}) with "
                             f"the batch of x {tuple(x.shape)}; got {tuple(c.shape)}")

    def shifts(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(b_1(c), ..., b_L(c))``, shapes ``(B, h_k)``."""
        return torch.split(self.embed(c), self.dims[1:], dim=1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        self._check(x, c)
        h = x
        for k, (lin, b) in enumerate(zip(self.linears, self.shifts(c), strict=True)):
            if k:
                h = self.activations[k - 1](h)
            h = lin(h) + b
        return h

    def forward_and_jacobian(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g(x, c), J_x g(x, c))``: ``J = W_L diag(phi'(h_{L-1})) ... diag(phi'(h_1)) W_1`` propagated with
        the layers (the shifts do not enter ``J`` except through the points ``h_k`` where ``phi'`` is taken)."""
        self._check(x, c)
        batch, d = x.shape
        h, jac = x, None
        for k, (lin, b) in enumerate(zip(self.linears, self.shifts(c), strict=True)):
            if k:
                h, dphi = activation_value_and_derivative(self.activations[k - 1], h)
                jac = jac * dphi[:, None, :]
            w = lin.weight  # read once: the same normalized operator for the value and the Jacobian
            h = torch.nn.functional.linear(h, w, lin.bias) + b
            jac = w.t().expand(batch, d, -1) if jac is None else jac @ w.t()
        return h, jac

    def extra_repr(self) -> str:
        return f"dims={self.dims}, context_dim={self.context_dim}"
