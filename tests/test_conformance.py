"""The conformance kit over every registry entry whose data needs no files (timm-style)."""
import pytest

from zoo_core.plugins import get_plugins
from zoo_core.registry import Registry
from zoo_core.testing import CHECKS, case_from_config

FILE_FREE = {"moons", "8gaussians", "checkerboard", "rings", "spirals", "digits"}


def _entries():
    registry = Registry()
    return [n for n in registry.names() if (registry.raw(n).body.get("data") or {}).get("name") in FILE_FREE]


ENTRIES = _entries()
_CASES = {}


def _case(entry):
    if entry not in _CASES:
        _CASES[entry] = case_from_config(Registry().resolve(entry))
    return _CASES[entry]


def test_every_family_has_a_file_free_entry():
    covered = {Registry().raw(n).body["family"] for n in ENTRIES}
    assert covered == set(get_plugins().families)


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("entry", ENTRIES)
def test_conformance(entry, check):
    CHECKS[check](_case(entry))
