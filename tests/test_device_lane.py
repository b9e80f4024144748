"""The test lanes themselves: ``--device`` reaches the tests through the default device and the ``device`` fixture."""

import pytest
import torch


def test_default_device_and_dtype_follow_the_device_fixture(device):
    x = torch.empty(1)
    assert x.device.type == device.type and x.dtype == torch.float64


@pytest.mark.cpu_only
def test_cpu_only_tests_run_on_the_cpu(device):
    assert device == torch.device("cpu") and torch.empty(1).device.type == "cpu"
