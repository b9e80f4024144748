"""Fuzzing crafted checkpoints: a mutated ``checkpoint.safetensors`` loads the stored model exactly or fails with a
documented one-line error (``ValueError`` / ``FileNotFoundError`` / ``OSError``), never another exception and
never different weights.

Mutations (seeded, reproducible): a metadata string replaced (by empty, ``{}``, ``null``, ``1e999``, ...), one leaf
of the JSON config or meta replaced by a value of another type or deleted, a metadata key deleted, a tensor
entry's shape / dtype / data offsets changed, a bit flipped in the tensor bytes, a tensor entry dropped or
renamed, the tensor bytes truncated. The oracle compares the loaded state dict with the stored one (NaN-aware,
shapes and dtypes included). The fast lane runs 60 mutations, the ``@slow`` campaign 600 of another seed.
"""

from __future__ import annotations

import json
import random
import struct

import pytest
import torch

from invertible.io import save_checkpoint
from invertible.models import registry
from invertible.training.runs import load_run

pytestmark = pytest.mark.cpu_only

ODD = [None, True, -1, 0, 1e308, float("nan"), "x", [], {}, [1, 2], {"a": 1}, "9" * 40, -2**63, 2**64, "", 1.5]
DOCUMENTED = (ValueError, FileNotFoundError, OSError)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    torch.manual_seed(0)
    cfg = registry.config_type("vector_resflow")(dim=2, n_blocks=2, hidden=(8,))
    model = registry.build_model("vector_resflow", cfg).float()
    model.initialize(torch.randn(16, 2, dtype=torch.float32))
    path = tmp_path_factory.mktemp("ck") / "checkpoint.safetensors"
    config = {"model": {"kind": "vector_resflow", **registry.config_to_dict(cfg)}, "dtype": "float32",
              "train": {"steps": 3, "lr": 1e-3, "seed": 0}}
    save_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()}, kind="vector_resflow",
                    config=config, meta={"step": 3, "last_val": {"nll": 1.0, "exact": True}})
    return path, load_run(path)[0].state_dict()


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    else:
        yield path, obj


def _mutate(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    n = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8:8 + n]), bytearray(raw[8 + n:])
    meta = header["__metadata__"]
    tensors = [k for k in header if k != "__metadata__"]
    what = rng.randrange(7)
    if what == 0:
        key = rng.choice(list(meta))
        meta[key] = rng.choice(["", "x", "{}", "[]", "null", "1e999", json.dumps(rng.choice(ODD))])
        desc = f"meta[{key}] = {meta[key][:30]!r}"
    elif what == 1:
        key = rng.choice(["config", "meta"])
        obj = json.loads(meta[key])
        path, old = rng.choice(list(_leaves(obj)))
        target = obj
        for p in path[:-1]:
            target = target[p]
        if rng.random() < 0.2:
            del target[path[-1]]
            desc = f"{key}{list(path)} deleted"
        else:
            target[path[-1]] = rng.choice(ODD)
            desc = f"{key}{list(path)}: {old!r} -> {target[path[-1]]!r}"
        meta[key] = json.dumps(obj)
    elif what == 2:
        key = rng.choice(list(meta))
        del meta[key]
        desc = f"meta[{key}] deleted"
    elif what == 3:
        key = rng.choice(tensors)
        entry, field = header[key], rng.choice(["shape", "dtype", "data_offsets"])
        if field == "shape":
            entry["shape"] = rng.choice([[], [0], entry["shape"][::-1], [-1], [*entry["shape"], 1],
                                         [max(1, len(entry["shape"])) * 2]])
        elif field == "dtype":
            entry["dtype"] = rng.choice(["F64", "F16", "I64", "BOOL", "U8", "X"])
        else:
            a, b = entry["data_offsets"]
            entry["data_offsets"] = [a + rng.choice([-4, 4, 1]), b + rng.choice([0, 4])]
        desc = f"{key}.{field} = {entry[field]}"
    elif what == 4:
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
        desc = f"bit flip at byte {i}"
    elif what == 5:
        key = rng.choice(tensors)
        entry = header.pop(key)
        if rng.random() < 0.5:
            header[key + "_"] = entry
        desc = f"tensor {key} dropped or renamed"
    else:
        cut = rng.randrange(len(data))
        data = data[:cut]
        desc = f"tensor bytes truncated at {cut}"
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + bytes(data), desc


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype
        and torch.allclose(a[k], b[k], rtol=0, atol=0, equal_nan=True) for k in a)


def _campaign(stored, tmp_path, seed: int, n: int) -> None:
    path, reference = stored
    raw, rng, failures = path.read_bytes(), random.Random(seed), []
    for i in range(n):
        blob, desc = _mutate(raw, rng)
        target = tmp_path / f"m{i}.safetensors"
        target.write_bytes(blob)
        try:
            loaded = load_run(target)[0].state_dict()
        except DOCUMENTED as err:
            if "\n" in str(err).strip():
                failures.append(f"{desc}: multi-line message {str(err)[:120]!r}")
            continue
        except Exception as err:  # noqa: BLE001 - the point of the campaign
            failures.append(f"{desc}: {type(err).__name__}: {str(err)[:160]}")
            continue
        if not _same(loaded, reference):
            failures.append(f"{desc}: loaded other weights without an error")
    assert not failures, "\n".join(failures)


def test_crafted_checkpoints_load_exactly_or_fail_clearly(stored, tmp_path):
    _campaign(stored, tmp_path, seed=1, n=60)


@pytest.mark.slow
def test_crafted_checkpoint_campaign(stored, tmp_path):
    _campaign(stored, tmp_path, seed=20261201, n=600)
