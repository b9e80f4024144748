"""Test set-up: float64, seeded, one intra-op thread; ``--device`` to run the device-aware tests on a GPU.

``pytest --device cuda`` makes CUDA torch's default device (``torch.set_default_device``) for every test that is
not CPU-only, so tensors and modules the tests build land on the GPU without a change to the test bodies; a
test that wants the device explicitly takes the ``device`` fixture. Asking for CUDA where none is available is a
usage error, not a silent CPU run.

CPU-only tests (marker ``cpu_only``) always run on the CPU, whatever ``--device`` says. Whole modules are
CPU-only for the reasons in :data:`CPU_ONLY_MODULES`; single tests elsewhere carry the marker themselves
(those seeded by a CPU ``torch.Generator`` in their body: a CUDA generator draws other numbers).

Lanes: ``pytest -m "not slow"`` (``make test``) is the fast lane; ``pytest`` (``make test-all``) runs all.
"""

import pytest
import torch

# module -> why it runs on the CPU only. Device-aware (not listed): the bijection contract, log-det estimators,
# inverse solvers, Lipschitz control and the Flow distribution (test_bijections, test_logdet, test_inverse,
# test_lipschitz, test_flow), apart from their single cpu_only tests.
CPU_ONLY_MODULES: dict[str, str] = {
    "test_analyze_relu_cli": "CLI command (its own --device option, default cpu) and numpy inputs",
    "test_certify": "certificates compare against dense SVDs / scipy Lanczos on the host",
    "test_classifier_training": "CLI and run-folder training with --device cpu and CPU data sources",
    "test_cli_flow": "CLI command (its own --device option, default cpu)",
    "test_cli_errors": "CLI commands (their own --device option, default cpu) on tiny CPU runs",
    "test_cli_options": "argument parsing only",
    "test_conditional": "conditional data sets and sources seeded by CPU generators; a CLI run",
    "test_distributed": "two gloo (CPU) ranks in subprocesses",
    "test_firevnet": "CPU generators and numpy in the model checks",
    "test_claims_quick": "quick reproductions and numpy/scipy statistics (the registry runs them on the CPU)",
    "test_ice": "training loops seeded by CPU generators; numpy nuisance probe",
    "test_ims_baseline": "numpy/scikit-learn baseline",
    "test_ims_cli": "CLI command (its own --device option, default cpu)",
    "test_ims_evaluate": "numpy cross-validation pipeline",
    "test_ims_imzml": "file parsing (numpy)",
    "test_ims_isotopes": "numpy isotope patterns",
    "test_ims_models": "numpy inputs to the IMS training loop",
    "test_ims_preprocess": "numpy preprocessing",
    "test_ims_synthetic": "numpy generator of synthetic measurements",
    "test_io": "files on disk; checkpoints hold CPU tensors",
    "test_iresnet": "CPU generators in the reconstruction checks",
    "test_linearization": "numpy/scipy spectra",
    "test_metameric": "CPU generators in the sampling checks",
    "test_relu_preimage": "linear programs (scipy)",
    "test_reproduce_cli": "CLI command and experiment registry",
    "test_resflow": "torch.jit / compiled paths checked on the CPU; CPU generators",
    "test_shifted": "uint8 image manipulation with CPU generators",
    "test_spheres": "CPU generators in the attack checks",
    "test_toy2d": "numpy quadrature of the toy densities",
    "test_training": "the training engine with CPU data sources and checkpoints",
}


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="torch device for the device-aware tests: cpu (default), cuda or cuda:N")


def _requested_device(config) -> torch.device:
    text = config.getoption("--device")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise pytest.UsageError(f"--device: expected cpu, cuda or cuda:N, got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise pytest.UsageError(f"--device: expected cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise pytest.UsageError("--device cuda: no CUDA device is available (torch.cuda.is_available() is "
                                    "False); run without --device on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise pytest.UsageError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def pytest_configure(config):
    config.device = _requested_device(config)


def pytest_report_header(config):
    return f"device: {config.device} (cpu_only tests on cpu)"


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""
        if module in CPU_ONLY_MODULES:
            item.add_marker(pytest.mark.cpu_only)


@pytest.fixture
def device(request) -> torch.device:
    """The device this test runs on: ``--device`` (default cpu), or cpu for a ``cpu_only`` test."""
    if request.node.get_closest_marker("cpu_only") is not None:
        return torch.device("cpu")
    return request.config.device


@pytest.fixture(autouse=True)
def _float64_seed_one_thread(device):
    """Tests run in float64 and seeded, so tolerances can be tight and results repeatable, on one intra-op
    thread: the tensors are tiny, and several threads on a shared 2-core machine stall each other. With
    ``--device cuda`` the test's default device is the GPU (``device`` fixture)."""
    old_dtype, old_threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if device.type != "cpu":
        torch.set_default_device(device)
    try:
        yield
    finally:
        if device.type != "cpu":
            torch.set_default_device("cpu")
        torch.set_default_dtype(old_dtype)
        torch.set_num_threads(old_threads)
