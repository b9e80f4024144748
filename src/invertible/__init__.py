"""invertible: invertible neural networks after Behrmann's thesis (i-ResNets, residual flows, analysis)."""

__version__ = "0.1.0"
__all__: list[str] = []
