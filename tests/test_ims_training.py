"""The IMS classifier recipe (Table A.2) on the engine: the classic loop's numbers, the memmap rows, DDP."""

import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from helpers import spawn_gloo_ranks
from invertible.ims.models import IsotopeNet, ResidualNet
from invertible.ims.training import IMSConfig, RowSource, ims_model_config, l2_weights, train_ims

D = 120


def _data(n: int = 33):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, D)).astype(np.float32)
    y = (np.arange(n) % 2).astype(np.int64)
    X[y == 1, 40:60] += 1.5
    return X, y


def _classic_loop(model, X, y, config: IMSConfig, generator):
    """The loop train_ims ran before the engine (verbatim): the reference numbers."""
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    decay = l2_weights(model)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    n = len(X)
    history = []
    model.train()
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=generator)
        total = 0.0
        for s in range(0, n, config.batch_size):
            idx = perm[s:s + config.batch_size]
            if len(idx) < 2:
                continue
            xb = torch.from_numpy(np.ascontiguousarray(X[np.sort(idx.numpy())])).to(next(model.parameters()).dtype)
            yb = yt[np.sort(idx.numpy())]
            loss = F.cross_entropy(model(xb), yb)
            if config.weight_decay:
                loss = loss + config.weight_decay * sum((w * w).sum() for w in decay)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        history.append(total / n)
    return history


CASES = {
    "isotopenet-dropout": (lambda: IsotopeNet(D, dropout=0.3), IMSConfig(lr=5e-3, weight_decay=1e-3,
                                                                         batch_size=16, epochs=3), 7),
    "residualnet": (lambda: ResidualNet(2), IMSConfig(lr=5e-3, weight_decay=1e-3, batch_size=8, epochs=2), 3),
    "global-generator": (lambda: IsotopeNet(D, dropout=0.3), IMSConfig(lr=5e-3, weight_decay=0.0, batch_size=16,
                                                                       epochs=2), None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_engine_reproduces_the_classic_loop_bit_for_bit(case):
    build, cfg, seed = CASES[case]
    X, y = _data()  # 33 = 2 * 16 + 1 and 4 * 8 + 1: the one-sample batch is skipped
    runs = []
    for train in (_classic_loop, lambda m, X, y, c, g: train_ims(m, X, y, c, generator=g)):
        torch.manual_seed(0)
        model = build()
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        history = train(model, X, y, cfg, gen)
        runs.append((history, model.state_dict(), torch.get_rng_state(), None if gen is None else gen.get_state()))
    (h0, s0, rng0, g0), (h1, s1, rng1, g1) = runs
    assert h1 == h0 and len(h1) == cfg.epochs
    assert torch.equal(rng1, rng0)  # dropout (and, without a generator, the permutations) drew the same numbers
    assert (g0 is None and g1 is None) or torch.equal(g1, g0)  # the generator ends where the loop left it
    for k, v in s1.items():
        torch.testing.assert_close(v, s0[k], rtol=0, atol=0, msg=k)


def test_row_source_reads_sorted_rows_and_skips_one_sample_batches():
    X, y = _data(33)

    class Recording:
        def __init__(self):
            self.reads = []

        def __len__(self):
            return len(X)

        def __getitem__(self, rows):
            self.reads.append(rows)
            return X[rows]

    rec = Recording()
    src = RowSource(rec, y, 16, torch.Generator().manual_seed(0))
    assert src.steps_per_epoch() == 2 and src.steps_per_epoch(2) == 2 and RowSource(X, y, 8).steps_per_epoch(4) == 4
    with pytest.raises(ValueError, match="no batch with at least 2"):
        RowSource(X, y, 8).steps_per_epoch(5)
    xb, yb = src.batch(3)
    assert np.all(np.diff(rec.reads[-1]) > 0) and len(rec.reads[-1]) == 16
    np.testing.assert_array_equal(xb.numpy(), X[rec.reads[-1]])
    np.testing.assert_array_equal(yb.numpy(), y[rec.reads[-1]])
    assert ims_model_config(IsotopeNet(D))["kind"] == "isotopenet"
    rebuilt = IsotopeNet(**{k: v for k, v in ims_model_config(IsotopeNet(D, 3)).items() if k != "kind"})
    assert rebuilt.fc.out_features == 3


def _worker(rank: int, world: int, folder: str) -> None:
    X, y = _data(40)
    torch.manual_seed(0)
    net = IsotopeNet(D, dropout=0.3)
    init = {k: v.clone() for k, v in net.state_dict().items()}
    hist = train_ims(net, X, y, IMSConfig(lr=5e-3, weight_decay=1e-3, batch_size=16, epochs=2),
                            generator=torch.Generator().manual_seed(1), out=os.path.join(folder, f"rank{rank}"))
    torch.save({"init": init, "final": net.state_dict(), "history": torch.tensor(hist)},
               os.path.join(folder, f"state{rank}.pt"))


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_gloo_ranks_end_identical_and_only_rank0_writes(tmp_path):
    spawn_gloo_ranks(_worker, tmp_path)
    r0 = torch.load(tmp_path / "state0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "state1.pt", weights_only=True)
    for k, v in r0["final"].items():  # parameters by the gradient all-reduce, BatchNorm statistics by broadcast
        torch.testing.assert_close(v, r1["final"][k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(v, r0["init"][k]) for k, v in r0["final"].items() if v.is_floating_point())
    assert not torch.equal(r0["history"], r1["history"])  # the ranks trained on different halves of each batch
    assert {p.name for p in (tmp_path / "rank0").iterdir()} == {"config.json", "metrics.jsonl", "metrics.json",
                                                                "report.md", "checkpoint.safetensors"}
    assert not (tmp_path / "rank1").exists()
    assert json.loads((tmp_path / "rank0" / "config.json").read_text())["model"]["kind"] == "isotopenet"


def test_load_run_rebuilds_an_ims_network_from_its_run_folder(tmp_path):
    from invertible.training.runs import load_run

    X, y = _data(40)
    torch.manual_seed(0)
    net = IsotopeNet(D, 2, dropout=0.3)
    train_ims(net, X, y, IMSConfig(lr=5e-3, weight_decay=1e-3, batch_size=16, epochs=1),
              generator=torch.Generator().manual_seed(1), out=tmp_path)
    loaded, ck = load_run(tmp_path)
    assert ck.kind == "isotopenet" and isinstance(loaded, IsotopeNet)
    net.eval()
    x = torch.from_numpy(X[:5]).to(next(net.parameters()).dtype)
    torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
