"""One model registry: ``kind -> (typed config dataclass, builder)``; the model part of the checkpoint schema.

A checkpoint stores a model as ``{"kind": kind, **config_to_dict(config)}`` (JSON) next to its weights, and
:func:`build_model` rebuilds it. Configs are dataclasses deriving from :class:`ModelConfig`, so a parameter can
be followed from the shell to the layer; unknown keys are refused by name, missing keys take the dataclass
defaults (or a kind's *legacy* defaults: values that checkpoints written before a field existed were built with).

The built-in kinds register themselves where their builders live (:mod:`invertible.models` imports them all):
``vector_resflow``, ``image_resflow``, ``conditional_resflow``, ``coupling``, ``iresnet_classifier``,
``preact_resnet``, ``fi_revnet``, ``fi_iresnet``, ``relu_net``, ``digits_iresnet``, ``hybrid_resflow``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from torch import nn

__all__ = [
    "ModelConfig",
    "register_model",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "model_kinds",
    "config_type",
]

C = TypeVar("C", bound=Callable[..., nn.Module])


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base of every typed model config (a frozen dataclass). ``LEGACY`` maps field names to the value a stored
    config *without* that field was built with (it overrides the dataclass default on load only)."""

    LEGACY: ClassVar[dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict (tuples -> lists, recursively)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments of the kind's builder function (values as stored)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(u) for u in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(u) for k, u in v.items()}
    return v


_REGISTRY: dict[str, tuple[type[ModelConfig], Callable[[Any], nn.Module]]] = {}

#: Kinds defined above the models layer (the chapter-7 networks) register themselves in their own module; the
#: registry imports that module by name on first use, as the experiment registry finds its experiments, so that
#: ``load_run`` rebuilds them without the models layer importing ``ims``.
KIND_MODULES: dict[str, str] = {"isotopenet": "invertible.ims.models", "residualnet": "invertible.ims.models"}


def register_model(kind: str, config_type: type) -> Callable[[C], C]:
    """Decorator: register ``builder(config) -> nn.Module`` for ``kind`` with its config dataclass."""
    if not (isinstance(config_type, type) and dataclasses.is_dataclass(config_type)):
        raise TypeError(f"config_type must be a dataclass, got {config_type!r}")

    def decorate(builder: C) -> C:
        if kind in _REGISTRY and _REGISTRY[kind][1] is not builder:
            raise ValueError(f"model kind {kind!r} is already registered")
        _REGISTRY[kind] = (config_type, builder)
        return builder

    return decorate


def model_kinds() -> tuple[str, ...]:
    """The registered kinds (including those of :data:`KIND_MODULES`), sorted."""
    return tuple(sorted(set(_REGISTRY) | set(KIND_MODULES)))


def _entry(kind: str) -> tuple[type[ModelConfig], Callable[[Any], nn.Module]]:
    if kind not in _REGISTRY and kind in KIND_MODULES:
        import importlib

        importlib.import_module(KIND_MODULES[kind])
    if kind not in _REGISTRY:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(model_kinds())}")
    return _REGISTRY[kind]


def config_type(kind: str) -> type:
    """The config dataclass of ``kind``."""
    return _entry(kind)[0]


def config_from_dict(kind: str, d: Mapping[str, Any]) -> Any:
    """The typed config of ``kind`` from a stored dict. A ``"kind"`` key must equal ``kind``; unknown keys are a
    ``ValueError`` naming them; missing keys take the kind's legacy values, else the dataclass defaults; a missing
    field without a default is a ``ValueError`` naming it. Lists become tuples where the field default is one."""
    cls = _entry(kind)[0]
    d = dict(d)
    stored_kind = d.pop("kind", kind)
    if stored_kind != kind:
        raise ValueError(f"config is for model kind {stored_kind!r}, not {kind!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"unknown {kind} config keys: {', '.join(unknown)}; known: {', '.join(fields)}")
    for name, value in getattr(cls, "LEGACY", {}).items():
        d.setdefault(name, value)
    missing = [n for n, f in fields.items() if n not in d and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{kind} config misses required keys: {', '.join(missing)}")
    hints = _type_hints(cls)
    for k, v in d.items():
        if k in hints and not _matches(hints[k], v):
            raise ValueError(f"{kind} config key {k!r} must be {_describe(hints[k])}, got {v!r}")
        limit = _size_limit(k)
        if any(isinstance(u, int) and not isinstance(u, bool) and abs(u) > limit for u in _flat(v)):
            raise ValueError(f"{kind} config key {k!r} = {v!r} exceeds {limit:,}: an implausible size for a stored "
                             "model (a crafted or corrupt config would hang or exhaust memory when built)")
    return cls(**{k: _as_field(fields[k], v) for k, v in d.items()})


#: The largest integer a stored config may hold: iteration and block counts are run or built at load time.
MAX_STORED_COUNT = 100_000
MAX_STORED_SIZE = 10_000_000


def _size_limit(key: str) -> int:
    return MAX_STORED_COUNT if ("iteration" in key or "block" in key or "depth" in key) else MAX_STORED_SIZE


def _flat(v: Any) -> list[Any]:
    return [w for u in v for w in _flat(u)] if isinstance(v, list | tuple) else [v]


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: no type checks for this kind
        return {}


def _matches(hint: Any, v: Any) -> bool:
    """Does the JSON value ``v`` fit the annotation ``hint``? (bool, int, float, str, tuples/lists, unions, None;
    anything else is accepted). ``True`` is no int, an int is a float, NaN and inf are no float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(a, v) for a in args)
    if hint is type(None):
        return v is None
    if hint is bool:
        return isinstance(v, bool)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if hint is float:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if hint is str:
        return isinstance(v, str)
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(v, list | tuple):
            return False
        if not args:
            return True
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(args[0], u) for u in v)
        if origin is tuple:
            return len(args) == len(v) and all(_matches(a, u) for a, u in zip(args, v, strict=True))
        return all(_matches(args[0], u) for u in v)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(v, dict)
    return True


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _as_field(f: dataclasses.Field, v: Any) -> Any:
    """JSON gives lists; store them as tuples (hashable, immutable) in the frozen config."""
    return tuple(_as_field(f, u) if isinstance(u, list) else u for u in v) if isinstance(v, list) else v


def config_to_dict(config: Any) -> dict[str, Any]:
    """The fields of a typed config as a JSON-able dict (tuples -> lists); no ``"kind"`` key."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config_to_dict expects a dataclass instance, got {type(config).__name__}")
    return {f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}


def build_model(kind: str | Mapping[str, Any] | ModelConfig, config: Any = None) -> nn.Module:
    """Build a model of ``kind`` from its typed config or a stored dict. One-argument forms: a dict that holds
    ``"kind"`` (the checkpoint form) or a typed config (its kind is found by type). Sets ``model.kind`` and
    ``model.config`` (the typed config)."""
    if not isinstance(kind, str):
        if config is not None:
            raise TypeError("build_model(kind, config): kind must be a str")
        if dataclasses.is_dataclass(kind) and not isinstance(kind, type):
            kinds = [k for k, (cls, _) in _REGISTRY.items() if type(kind) is cls]
            if len(kinds) != 1:
                raise ValueError(f"no single model kind is registered for {type(kind).__name__}")
            kind, config = kinds[0], kind
        elif isinstance(kind, Mapping) and "kind" in kind:
            kind, config = str(kind["kind"]), kind
        else:
            raise ValueError("build_model(config) needs a typed config or a mapping with a 'kind' key")
    cls, builder = _entry(kind)
    if config is None:
        config = {}
    if isinstance(config, Mapping):
        config = config_from_dict(kind, config)
    elif not isinstance(config, cls):
        raise TypeError(f"{kind} needs a {cls.__name__} or a mapping, got {type(config).__name__}")
    model = builder(config)
    model.kind = kind
    model.config = config
    return model
