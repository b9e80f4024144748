"""Invertibility certificates for trained i-ResNet classifiers (thesis Remark 4.9, eq. 4.6, Lemma 4.6).

For every residual block ``F_t = I + g_t`` of the feature map, with ``g_t`` a chain of convolutions ``A_i``,
1-Lipschitz ELUs and (in the BatchNorm variant) eval-mode batch norms ``B_j`` (and i-DenseNet dense layers
``h = [eta_1 x, eta_2 f(x)]``, each bounded by ``sqrt(eta_1^2 + eta_2^2 Lip(f)^2)``, :mod:`invertible.dense`):

    Lip(g_t) <= L_t := prod_i ||A_i||_2 * prod_j max_c |gamma_c| / sqrt(var_c + eps)        (eq. 4.6)

where ``||A_i||_2`` is the norm of the convolution *operator* on the block's input grid: computed exactly (SVD of
the materialised operator) when it is small and otherwise bounded from above by the FFT-SVD of the circular
convolution on the grid enlarged by the kernel support (never wraps, so it dominates the zero-padded operator),
next to the power iteration run to convergence (a lower bound, the "exact" norm of Fig. 4.2 up to ~1e-6).

The feature map is *certified invertible* iff ``L_t < 1`` for every block (Theorem 4.1). Then, with ActNorm
``a_s`` (per-channel scales ``exp(log_scale)``), squeezes and padding being isometries (onto their image),

    Lip(F) <= prod_t (1 + L_t) * prod_s max_c exp(log_scale_c),
    Lip(F^{-1}) <= prod_t 1 / (1 - L_t) * prod_s max_c exp(-log_scale_c)                      (Lemma 4.6)

References: Behrmann et al. (2019) "Invertible Residual Networks"; Sedghi, Gupta, Long (2019) "The singular
values of convolutional layers".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from invertible.activations import activation_lipschitz
from invertible.dense import DenseLayer
from invertible.lipschitz import (
    DENSE_ENTRIES,
    DENSE_LIMIT,
    local_lipschitz,
    norm_method,
    operator_norm,
    operator_norm_upper_bound,
    spectral_norm_of,
)
from invertible.nn import ActNorm, ConditionalResidualBlock, InjectivePad, ResidualBlock, Squeeze

__all__ = [
    "LayerNorm", "BlockCertificate", "Certificate", "certify_features", "certify_classifier", "VERDICT_OK",
    "realized_lipschitz", "format_realized", "certify_conditional",
]

VERDICT_OK = "invertible (certified)"


@dataclass
class LayerNorm:
    """One layer of ``g_t``: ``norm`` is the best value of ``||A||_2`` (exact, or power iteration to
    convergence), ``upper`` a certified upper bound (equal to ``norm`` when ``exact``)."""

    name: str
    kind: str
    input_shape: list[int]
    norm: float
    upper: float
    exact: bool
    spectral_norm: bool  # whether the layer is spectrally normalized


@dataclass
class BlockCertificate:
    """Certificate of one residual block: ``lipschitz`` is the certified bound ``L_t`` on ``Lip(g_t)``."""

    index: int
    input_shape: list[int]
    layers: list[LayerNorm]
    lipschitz: float

    @property
    def contractive(self) -> bool:
        return self.lipschitz < 1.0


@dataclass
class Certificate:
    """Whole-network certificate; ``verdict`` is ``"invertible (certified)"`` iff every block has ``L_t < 1``."""

    input_shape: list[int]
    blocks: list[BlockCertificate]
    lipschitz_forward: float
    lipschitz_inverse: float
    certified: bool
    verdict: str
    notes: list[str] = field(default_factory=list)

    @property
    def max_lipschitz(self) -> float:
        return max((b.lipschitz for b in self.blocks), default=0.0)

    def conv_norms(self) -> list[float]:
        """``||A_i||_2`` of every convolution in forward order (the points of Fig. 4.2)."""
        return [layer.norm for b in self.blocks for layer in b.layers if layer.kind.startswith("conv")]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["max_lipschitz"] = self.max_lipschitz
        for k in ("lipschitz_forward", "lipschitz_inverse"):
            d[k] = d[k] if math.isfinite(d[k]) else str(d[k])
        return d

    def format(self) -> str:
        """A plain-text table: per block the conv norms and ``L_t``, then the verdict and Lemma 4.6 bounds."""
        lines = [f"Certificate for input shape {tuple(self.input_shape)}", ""]
        header = f"{'block':>5}  {'shape':<14} {'conv norms ||A_i||_2 (certified upper)':<52} {'Lip(g_t) <=':>11}"
        lines += [header, "-" * len(header)]
        for b in self.blocks:
            convs = [layer for layer in b.layers if layer.kind.startswith("conv") or layer.kind == "linear"]
            parts = [f"{c.norm:.4f}" + ("" if c.exact else f" ({c.upper:.4f})") for c in convs]
            extra = [layer for layer in b.layers if layer.kind == "batchnorm"]
            if extra:
                parts.append("BN " + " ".join(f"{e.upper:.3g}" for e in extra))
            flag = "" if b.contractive else "  <- not contractive"
            shape = "x".join(str(s) for s in b.input_shape)
            lines.append(f"{b.index:>5}  {shape:<14} {', '.join(parts):<52} {b.lipschitz:>11.4f}{flag}")
        lines += [
            "",
            f"max_t Lip(g_t) <= {self.max_lipschitz:.4f} over {len(self.blocks)} blocks",
            f"verdict: {self.verdict}",
            f"Lip(F) <= {_fmt(self.lipschitz_forward)},  Lip(F^-1) <= {_fmt(self.lipschitz_inverse)}  (Lemma 4.6)",
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "inf (no bound: some block is not certified contractive)"
    return f"{v:.4g} (log10 {math.log10(v):.2f})" if v > 0 else f"{v:.4g}"


def _batchnorm_lipschitz(m: nn.BatchNorm2d) -> float:
    """Eval-mode BN is ``x -> gamma (x - mu) / sqrt(var + eps) + beta`` per channel: Lipschitz max |scale|."""
    if m.running_var is None:
        raise ValueError("cannot certify a BatchNorm2d without running statistics (track_running_stats=False)")
    scale = 1.0 / torch.sqrt(m.running_var.double() + m.eps)
    if m.weight is not None:
        scale = scale * m.weight.detach().double().abs()
    return float(scale.max())


def _is_spectral_normalized(m: nn.Module) -> bool:
    return spectral_norm_of(m) is not None


def _conv_norm(m: nn.Module, shape: Sequence[int], exact: bool) -> tuple[float, float, bool]:
    """``(norm, upper, exact)`` for a Linear/Conv layer acting on per-sample ``shape``.

    :func:`invertible.operator_norm` is exact for Linear layers, 1x1 convolutions, circular convolutions and
    operators small enough to materialise (:func:`invertible.lipschitz.norm_method`); ``exact=True`` also
    materialises operators up to 4x that size. Otherwise ``norm`` comes from Lanczos to a relative tolerance
    and ``upper`` is the certified FFT bound, which the certificate uses."""
    method = norm_method(m, shape)
    n_in = math.prod(shape)
    if method == "lanczos" and exact and n_in <= 4 * DENSE_LIMIT and n_in * n_in * 4 <= 4 * DENSE_ENTRIES:
        method = "dense"  # exact=True: materialise somewhat larger operators too (costly, but a certificate)
    if method != "lanczos":
        n = operator_norm(m, shape, method=method)
        return n, n, True
    upper = operator_norm_upper_bound(m, shape)
    n = operator_norm(m, shape, method="lanczos")
    return min(n, upper), upper, False


def _certify_chain(
    modules: list[nn.Module], h: torch.Tensor, exact: bool, prefix: str
) -> tuple[list[LayerNorm], float, torch.Tensor, bool]:
    """``(layer norms, bound on Lip of the chain, output, the requested exact flag)`` for a chain of
    layers applied to ``h`` (eq. 4.6); a :class:`~invertible.dense.DenseLayer` contributes ``sqrt(eta_1^2 +
    eta_2^2 K^2)`` with ``K`` its ``f``'s bound, its layers listed under ``prefix.j.f``."""
    layers: list[LayerNorm] = []
    lip = 1.0
    for j, m in enumerate(modules):
        shape = list(h.shape[1:])
        name = f"{prefix}.{j}"
        if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Linear):
            norm, upper, layer_exact = _conv_norm(m, shape, exact)  # `exact` stays the request for every layer
            k = "x".join(str(s) for s in m.kernel_size) if not isinstance(m, nn.Linear) else ""
            kind = f"conv{k}" if k else "linear"
            layers.append(LayerNorm(name, kind, shape, norm, upper, layer_exact, _is_spectral_normalized(m)))
            lip *= upper
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            c = _batchnorm_lipschitz(m)
            layers.append(LayerNorm(name, "batchnorm", shape, c, c, True, False))
            lip *= c
        elif isinstance(m, DenseLayer):
            inner = list(m.f) if isinstance(m.f, nn.Sequential) else [m.f]
            sub, k_f, _, _ = _certify_chain(inner, h, exact, f"{name}.f")
            c = m.lipschitz_from(k_f)
            layers += sub
            layers.append(LayerNorm(name, "dense", shape, c, c, all(x.exact for x in sub), False))
            lip *= c
        else:
            c = activation_lipschitz(m)
            if c is None:
                raise ValueError(
                    f"cannot certify {type(m).__name__} inside a residual block; known: Conv/Linear, BatchNorm "
                    "(eval), dense layers and the activations of invertible.activations"
                )
            lip *= c
        h = m(h)
    return layers, lip, h, exact


@torch.no_grad()
def _certify_block(
    block: ResidualBlock, index: int, x: torch.Tensor, exact: bool
) -> tuple[BlockCertificate, torch.Tensor]:
    g = block.g
    modules = list(g) if isinstance(g, nn.Sequential) else [g]
    layers, lip, h, _ = _certify_chain(modules, x, exact, "g")
    return BlockCertificate(index, list(x.shape[1:]), layers, lip), x + h


@torch.no_grad()
def certify_features(
    features: nn.Module, input_shape: Sequence[int], *, exact: bool = True
) -> Certificate:
    """Certify an ``InvertibleSequential`` of InjectivePad / Squeeze / ActNorm / ResidualBlock layers acting on
    per-sample ``input_shape`` (see the module docstring). The model is put in eval mode (BatchNorm running
    statistics, no power-iteration updates) and restored afterwards.

    Args:
        exact: use the dense SVD of the operator where its input has at most ``DENSE_LIMIT`` entries; otherwise
            (and always with ``exact=False``, much faster) ``norm`` is the power iteration run to convergence and
            the certificate uses the FFT upper bound.
    """
    shape = [int(s) for s in input_shape]
    was_training = features.training
    features.eval()
    try:
        p = next(iter(features.parameters()), None)
        dtype = p.dtype if p is not None else torch.get_default_dtype()
        device = p.device if p is not None else torch.device("cpu")
        x = torch.zeros((1, *shape), dtype=dtype, device=device)
        blocks: list[BlockCertificate] = []
        fwd, inv, notes = 1.0, 1.0, []
        for layer in features:
            if isinstance(layer, ResidualBlock):
                cert, x = _certify_block(layer, len(blocks), x, exact)
                blocks.append(cert)
                fwd *= 1.0 + cert.lipschitz
                inv = inv / (1.0 - cert.lipschitz) if cert.lipschitz < 1 else math.inf
            elif isinstance(layer, ActNorm):
                s = layer.log_scale.detach().double()
                fwd *= float(torch.exp(s).max())
                inv *= float(torch.exp(-s).max())
                x = layer(x)
            elif isinstance(layer, Squeeze | InjectivePad):
                x = layer(x)  # isometries (padding: onto its image), Lipschitz 1 both ways
            else:
                raise ValueError(f"cannot certify a {type(layer).__name__} in the feature map")
    finally:
        features.train(was_training)
    certified = bool(blocks) and all(b.contractive for b in blocks)
    if certified:
        verdict = VERDICT_OK
    else:
        bad = [b.index for b in blocks if not b.contractive]
        verdict = (
            f"NOT certified: {len(bad)} of {len(blocks)} blocks have Lip(g_t) bound >= 1 (blocks {_ranges(bad)})"
            if blocks else "NOT certified: no residual blocks"
        )
        notes.append("a bound >= 1 does not prove non-invertibility; it only means no guarantee (Theorem 4.1)")
    if any(not layer.exact for b in blocks for layer in b.layers):
        notes.append(
            "values in parentheses are certified FFT upper bounds used in Lip(g_t); the first value is the power "
            "iteration run to convergence"
        )
    return Certificate(shape, blocks, fwd, inv, certified, verdict, notes)


def certify_classifier(model: nn.Module, input_shape: Sequence[int] | None = None, **kwargs) -> Certificate:
    """Certify the feature map of an :class:`~invertible.models.iresnet.IResNetClassifier` (``model.features``)
    on ``input_shape`` (default: the model's own). Raises ``ValueError`` for models without an invertible
    feature map (e.g. the pre-activation ResNet baseline)."""
    features = getattr(model, "features", None)
    if features is None:
        raise ValueError(
            f"{type(model).__name__} has no invertible feature map to certify (strided convolutions and projections "
            "make a standard ResNet non-invertible by construction)"
        )
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError("pass input_shape=(C, H, W): the operator norms depend on the input size")
    return certify_features(features, shape, **kwargs)


@torch.no_grad()
def certify_conditional(model: nn.Module, context: torch.Tensor, x: torch.Tensor | None = None) -> Certificate:
    """Certify a conditional flow (:class:`~invertible.models.conditional.ConditionalResFlowConfig`'s model, or its
    ``ConditionalSequential``) in ``x`` for the fixed context ``context`` (``(d_c,)``, or ``(B, d_c)`` with ``x``).

    Per conditional block ``L_t = prod_k ||W_k||_2 prod Lip(phi)`` over its x-path (exact norms of the Linear
    layers): ``Lip_x(g_t(., c)) <= L_t`` for *every* ``c``, since the context only shifts each layer
    (:class:`~invertible.models.blocks.ConditionalLipschitzMLP`), and Lemma 4.6 gives the bi-Lipschitz bounds of
    ``F(., c)`` with the ActNorm scales. The fixed context is then checked on points: at ``x`` (default 256
    standard normal points), pushed through the flow, the realized ``max ||J_x g_t(x_t, c)||_2`` of every block
    (exact Jacobians) is recorded in ``notes``; a realized value above ``L_t`` is a ``ValueError`` (a broken
    certificate, impossible if the argument holds)."""
    seq = getattr(model, "bijection", model)
    p = next(seq.parameters())
    c = context.to(device=p.device, dtype=p.dtype)
    if x is None:
        x = torch.randn(256, getattr(model, "dim", 2), generator=torch.Generator().manual_seed(0))
    x = x.to(device=p.device, dtype=p.dtype)
    c = c.expand(x.shape[0], -1) if c.dim() == 1 else c
    was = seq.training
    seq.eval()
    blocks: list[BlockCertificate] = []
    fwd, inv, realized = 1.0, 1.0, []
    try:
        h = x
        for layer in seq:
            if isinstance(layer, ConditionalResidualBlock):
                path = layer.g.x_path()
                lip, norms = 1.0, []
                for j, m in enumerate(path):
                    if isinstance(m, nn.Linear):
                        n, upper, exact = _conv_norm(m, [m.in_features], True)
                        norms.append(LayerNorm(f"g.x_path.{j}", "linear", [m.in_features], n, upper, exact,
                                               _is_spectral_normalized(m)))
                        lip *= upper
                    else:
                        lip *= float(activation_lipschitz(m))
                cert = BlockCertificate(len(blocks), [h.shape[1]], norms, lip)
                blocks.append(cert)
                _, jac = layer.g.forward_and_jacobian(h, c)
                local = float(torch.linalg.matrix_norm(jac.double(), ord=2).max())
                if local > lip * (1 + 1e-6):
                    raise ValueError(f"block {cert.index}: realized ||J_x g|| = {local:.6g} exceeds its certified "
                                     f"bound {lip:.6g}")
                realized.append(local)
                fwd *= 1.0 + lip
                inv = inv / (1.0 - lip) if lip < 1 else math.inf
                h = layer(h, c)
            elif isinstance(layer, ActNorm):
                sc = layer.log_scale.detach().double()
                fwd *= float(torch.exp(sc).max())
                inv *= float(torch.exp(-sc).max())
                h = layer(h)
            else:
                raise ValueError(f"cannot certify a {type(layer).__name__} in a conditional flow")
    finally:
        seq.train(was)
    certified = bool(blocks) and all(b.contractive for b in blocks)
    verdict = VERDICT_OK if certified else "NOT certified: some block has Lip_x(g_t) bound >= 1"
    notes = ["the bounds hold for every context c (the context only shifts each layer of g_t)",
             f"at the fixed context, on {x.shape[0]} points: max ||J_x g_t(x_t, c)||_2 per block = "
             + ", ".join(f"{r:.4f}" for r in realized) + " (realized, <= the bound)"]
    return Certificate([x.shape[1]], blocks, fwd, inv, certified, verdict, notes)


def realized_lipschitz(model: nn.Module, x: torch.Tensor, n_iter: int = 30) -> list[dict[str, float]]:
    """How much of its certified budget each block uses on data: per residual block ``t`` of ``model.features``
    (or of ``model`` itself, an ``InvertibleSequential``), statistics over the images ``x`` ``(B, C, H, W)`` of

    * ``local``: ``||J_{g_t}(x_t)||_2``, the realized local Lipschitz constant (:func:`local_lipschitz`; a lower
      bound on ``Lip(g_t)``, to compare with the certified upper bound of eq. 4.6);
    * ``relative``: ``||g_t(x_t)|| / ||x_t||``, how far the block moves its input.

    Returns one dict per block with ``local_median``, ``local_max``, ``relative_median``. Runs in eval mode.
    """
    expected = getattr(model, "input_shape", None)
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        raise ValueError(
            f"the model was built and certified for inputs of shape {tuple(expected)}, got images of shape "
            f"{tuple(x.shape[1:])}: measure it on data of the kind it was trained on"
        )
    features = getattr(model, "features", model)
    was_training = features.training
    features.eval()
    out: list[dict[str, float]] = []
    try:
        with torch.no_grad():
            h = x
            for layer in features:
                if isinstance(layer, ResidualBlock):
                    local = local_lipschitz(layer.g, h, n_iter=n_iter, generator=torch.Generator().manual_seed(0))
                    rel = layer.g(h).flatten(1).norm(dim=1) / h.flatten(1).norm(dim=1).clamp_min(1e-30)
                    out.append({"local_median": float(local.median()), "local_max": float(local.max()),
                                "relative_median": float(rel.median())})
                h = layer(h)
    finally:
        features.train(was_training)
    return out


def format_realized(realized: list[dict[str, float]], certificate: Certificate | None = None) -> str:
    """A table of :func:`realized_lipschitz` next to the certified bounds (when a certificate is given)."""
    header = f"{'block':>5}  {'local Lip(g_t) median':>21} {'max':>8} {'certified <=':>12} {'|g(x)|/|x|':>11}"
    lines = ["Realized on data (local Lipschitz constant of g_t at the images; a lower bound):", header,
             "-" * len(header)]
    for t, r in enumerate(realized):
        cert = f"{certificate.blocks[t].lipschitz:.4f}" if certificate is not None else "-"
        lines.append(f"{t:>5}  {r['local_median']:>21.4f} {r['local_max']:>8.4f} {cert:>12} "
                     f"{r['relative_median']:>11.4f}")
    return "\n".join(lines)


def _ranges(idx: list[int]) -> str:
    if len(idx) > 12:
        return ", ".join(str(i) for i in idx[:12]) + ", ..."
    return ", ".join(str(i) for i in idx)
