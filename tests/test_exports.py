"""Every module of the package imports (no broken import after a module is split
or moved, no import-time need of a running cluster), and every name a module
lists in `__all__` is really there."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import loadctl


def _modules() -> list[str]:
    names = {"loadctl"}
    for sub in ("loadctl.protocol", "loadctl.agent", "loadctl.coordinator", "loadctl.chaos"):
        package = importlib.import_module(sub)
        names.add(sub)
        for info in pkgutil.walk_packages(package.__path__, sub + "."):
            names.add(info.name)
    for info in pkgutil.iter_modules([loadctl.__path__[0]], "loadctl."):
        names.add(info.name)
    names.discard("loadctl.__main__")  # runs the CLI when imported
    return sorted(names)


MODULES = _modules()


def test_the_package_has_its_parts() -> None:
    for part in ("loadctl.protocol.histogram", "loadctl.agent.runner", "loadctl.coordinator.run"):
        assert part in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_and_exports_what_it_lists(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        return
    assert len(set(exported)) == len(exported), f"{name}.__all__ lists a name twice"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists names it does not define: {missing}"
