"""The iCE recipe on the engine: the numbers of the classic per-epoch loop, the run folder, resume, DDP."""

import json
import os

import pytest
import torch
import torch.distributed as dist

from helpers import spawn_gloo_ranks
from invertible.invariance.ice import FactorizedGaussian, NuisanceClassifier, ice_step
from invertible.invariance.training import ICEConfig, _refit_nuisance, train_ice
from invertible.io import load_checkpoint
from invertible.models.firevnet import fi_revnet
from invertible.training.permuted import PermutedSource

C = 3


def _model():
    torch.manual_seed(5)
    return fi_revnet((1, 4, 4), C, n_squeeze=1, conv_blocks=1, hidden=4, dense_blocks=1, dense_hidden=8)


def _data(n: int = 37):
    g = torch.Generator().manual_seed(11)
    return torch.rand(n, 1, 4, 4, generator=g), torch.arange(n) % C


def _classic_loop(model, x, y, config: ICEConfig):
    """The loop train_ice ran before the engine (verbatim, without files): the reference numbers."""
    n_nuisance = model.dim - model.n_classes
    nuisance = NuisanceClassifier(n_nuisance, model.n_classes, hidden=config.nuisance_hidden,
                                  n_hidden_layers=config.nuisance_layers, standardize=config.nuisance_standardize)
    prior = FactorizedGaussian(n_nuisance)
    model_opt = torch.optim.Adam([*model.parameters(), *prior.parameters()], lr=config.lr)
    nuisance_opt = torch.optim.Adam(nuisance.parameters(), lr=config.nuisance_lr)
    gen = torch.Generator().manual_seed(config.seed)
    weights = (config.nuisance_weight, config.mle_weight) if config.objective == "ice" else (0.0, 0.0)
    n = x.shape[0]
    steps = (n + config.batch_size - 1) // config.batch_size
    history = []
    model.train()
    for epoch in range(config.epochs):
        if config.objective == "ice" and config.nuisance_refit_steps > 0:
            _refit_nuisance(model, nuisance, nuisance_opt, x, y, config.nuisance_refit_steps, config.batch_size)
        perm = torch.randperm(n, generator=gen)
        sums: dict[str, float] = {}
        for s in range(steps):
            idx = perm[s * config.batch_size : (s + 1) * config.batch_size]
            stats = ice_step(model, nuisance, prior, model_opt, nuisance_opt, x[idx], y[idx],
                             nuisance_weight=weights[0], mle_weight=weights[1], nuisance_steps=config.nuisance_steps,
                             form=config.form)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
        history.append({"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}})
    model.eval()
    return model, nuisance, prior, history


CASES = {
    "ice-mlp-ragged": ICEConfig(objective="ice", epochs=3, batch_size=16, nuisance_hidden=8, seed=3),
    "ice-refit-confusion": ICEConfig(objective="ice", epochs=2, batch_size=16, nuisance_standardize=True,
                                       nuisance_refit_steps=5, form="confusion", seed=1),
    "ice-minimax": ICEConfig(objective="ice", epochs=2, batch_size=8, form="minimax", nuisance_steps=1, seed=4),
    "ce": ICEConfig(objective="ce", epochs=2, batch_size=10, seed=2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_engine_reproduces_the_classic_loop_bit_for_bit(case, tmp_path):
    cfg = CASES[case]
    x, y = _data()
    ref_model, ref_nc, ref_prior, ref_history = _classic_loop(_model(), x, y, cfg)
    ref_rng = torch.get_rng_state()
    x, y = _data()
    res = train_ice(_model(), x, y, cfg, run_dir=tmp_path / "run", show_progress=False)
    assert res.history == ref_history
    assert torch.equal(torch.get_rng_state(), ref_rng)  # the same global random draws (refits), no others
    for new, ref in ((res.model, ref_model), (res.nuisance, ref_nc), (res.prior, ref_prior)):
        ref_state = ref.state_dict()
        for k, v in new.state_dict().items():
            torch.testing.assert_close(v, ref_state[k], rtol=0, atol=0, equal_nan=True, msg=f"{case} {k}")
    assert not res.model.training
    assert all(p.grad is None for p in res.nuisance.parameters())


def test_run_folder_checkpoint_and_refused_resume(tmp_path):
    x, y = _data()
    cfg = ICEConfig(objective="ice", epochs=2, batch_size=16, seed=3)
    meta = {"data": {"name": "toy", "n_train": 37}}
    res = train_ice(_model(), x, y, cfg, run_dir=tmp_path, show_progress=False, meta=meta)
    ck = load_checkpoint(tmp_path)
    assert ck.kind == "fi_revnet" and ck.config["model"]["kind"] == "fi_revnet"
    assert ck.config["train"] == json.loads(json.dumps(cfg.__dict__)) and ck.config["data"] == meta["data"]
    assert {"nuisance", "prior"} <= {k.split(".")[0] for k in ck.tensors}
    assert any(k.startswith("optim_nuisance.") for k in ck.tensors)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["recipe"] == "ice" and config["data"] == meta["data"]
    train = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["split"] == "train"]
    assert [r["epoch"] + 1 for r in train] == [h["epoch"] for h in res.history] == [1, 2]
    assert all(r[k] == h[k] for r, h in zip(train, res.history, strict=True) for k in ("loss", "ce", "mle"))
    with pytest.raises(ValueError, match=r"differs in data\.n_train"):
        train_ice(_model(), x, y, cfg, run_dir=tmp_path, resume=True, show_progress=False,
                         meta={"data": {"name": "toy", "n_train": 40}})
    with pytest.raises(ValueError, match=r"differs in .*train\.form"):
        train_ice(_model(), x, y, ICEConfig(**{**cfg.__dict__, "form": "minimax"}), run_dir=tmp_path,
                         resume=True, show_progress=False, meta=meta)
    more = train_ice(_model(), x, y, ICEConfig(**{**cfg.__dict__, "epochs": 3}), run_dir=tmp_path,
                            resume=True, show_progress=False, meta=meta)
    assert [h["epoch"] for h in more.history] == [1, 2, 3] and more.history[:2] == res.history


def test_permuted_source_replays_any_step():
    src = PermutedSource(23, 5, seed=7)
    assert src.steps_per_epoch() == 5 and PermutedSource(23, 5, min_batch=4).steps_per_epoch() == 4
    forward = [src.indices(t) for t in range(12)]
    g = torch.Generator().manual_seed(7)
    perms = [torch.randperm(23, generator=g) for _ in range(3)]
    assert torch.equal(forward[6], perms[1][5:10]) and torch.equal(forward[4], perms[0][20:])
    again = PermutedSource(23, 5, seed=7)
    for t in (11, 2, 7, 0):  # out of order, as after a resume
        assert torch.equal(again.indices(t), forward[t])
    assert torch.equal(torch.cat([src.indices(5, r, 2) for r in range(2)]).sort().values, perms[1][:5].sort().values)
    with pytest.raises(ValueError, match="in order"):
        glob = PermutedSource(23, 5, generator=torch.default_generator)
        glob.indices(6)
        glob.indices(0)


def _worker(rank: int, world: int, folder: str) -> None:
    x, y = _data(40)
    cfg = ICEConfig(objective="ice", epochs=2, batch_size=16, nuisance_standardize=True, nuisance_refit_steps=3,
                      seed=1)
    init = {k: v.clone() for k, v in _model().state_dict().items()}
    res = train_ice(_model(), x, y, cfg, run_dir=os.path.join(folder, f"rank{rank}"), show_progress=False)
    state = {f"model.{k}": v for k, v in res.model.state_dict().items()}
    state.update({f"nuisance.{k}": v for k, v in res.nuisance.state_dict().items()})
    state.update({f"prior.{k}": v for k, v in res.prior.state_dict().items()})
    torch.save({"init": init, "final": state}, os.path.join(folder, f"state{rank}.pt"))


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_gloo_ranks_end_identical_and_only_rank0_writes(tmp_path):
    spawn_gloo_ranks(_worker, tmp_path)
    r0 = torch.load(tmp_path / "state0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "state1.pt", weights_only=True)
    for k, v in r0["final"].items():
        torch.testing.assert_close(v, r1["final"][k], rtol=0, atol=0, equal_nan=True, msg=k)
    assert any(not torch.equal(r0["final"][f"model.{k}"], v) for k, v in r0["init"].items() if v.is_floating_point())
    assert {p.name for p in (tmp_path / "rank0").iterdir()} == {"config.json", "metrics.jsonl", "metrics.json",
                                                                "report.md", "checkpoint.safetensors"}
    assert not (tmp_path / "rank1").exists()
    assert json.loads((tmp_path / "rank0" / "config.json").read_text())["world_size"] == 2
