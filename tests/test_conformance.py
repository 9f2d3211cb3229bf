"""The conformance kit over every registry entry whose data needs no files (timm-style)."""
import pytest
import torch

from zoo_core.api import default_zoo
from zoo_core.testing import CHECKS, DEVICE_ENV, case_from_config, conformance_device, run_check

FILE_FREE = {"moons", "8gaussians", "checkerboard", "rings", "spirals", "digits"}


ZOO = default_zoo()


def _entries():
    registry = ZOO.registry
    return [n for n in registry.names() if (registry.raw(n).body.get("data") or {}).get("name") in FILE_FREE]


ENTRIES = _entries()
_CASES = {}


def _case(entry):
    if entry not in _CASES:
        _CASES[entry] = case_from_config(ZOO, ZOO.resolve(entry))
    return _CASES[entry]


def test_every_family_has_a_file_free_entry():
    covered = {ZOO.registry.raw(n).body["family"] for n in ENTRIES}
    assert covered == set(ZOO.plugins.families)


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("entry", ENTRIES)
def test_conformance(entry, check):
    run_check(CHECKS[check], _case(entry))  # a check that does not apply is reported as skipped, with its reason


def test_checks_run_on_the_device_named_by_zoo_test_device(monkeypatch):
    """ZOO_TEST_DEVICE picks the device of the case's data and models (cpu when unset)."""
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    case = case_from_config(ZOO, ZOO.resolve("gmm-moons"), batch=64)
    assert case.device == torch.device("cpu") and case.data.device == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    case = case_from_config(ZOO, ZOO.resolve("gmm-moons"), batch=64)
    assert case.device == torch.device("cpu")
    assert all(p.device == case.device for p in case.model().parameters())


def test_zoo_test_device_refuses_unknown_and_absent_devices(monkeypatch):
    for bad in ("tpu", "cuda:x", "mps"):
        monkeypatch.setenv(DEVICE_ENV, bad)
        with pytest.raises(ValueError, match=DEVICE_ENV):
            conformance_device()
    if not torch.cuda.is_available():  # a GPU check must fail without a GPU, not quietly run on the CPU
        monkeypatch.setenv(DEVICE_ENV, "cuda")
        with pytest.raises(RuntimeError, match="cuda.is_available"):
            conformance_device()
