"""A plug-in registry lists its package's plug-ins in the order of their modules, whatever imported
them first (rollout gates run in that order)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from nicheloop.plugins import PluginRegistry

MODULE = """
from {package} import REGISTRY


@REGISTRY.register
class Plugin:
    name = "{name}"
"""


def test_the_package_order_holds_whichever_module_was_imported_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = "plugins_for_a_test"
    root = tmp_path / package
    root.mkdir()
    (root / "__init__.py").write_text(
        "from nicheloop.plugins import PluginRegistry\n"
        f"REGISTRY: PluginRegistry = PluginRegistry('plug-in', {package!r})\n"
    )
    for module in ("a_first", "b_second", "c_third"):
        (root / f"{module}.py").write_text(MODULE.format(package=package, name=module))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))  # the test's modules go with it
    registry: PluginRegistry = importlib.import_module(package).REGISTRY
    importlib.import_module(f"{package}.c_third")  # a caller imports one module before any lookup

    class Outside:
        name: ClassVar[str] = "outside"

    registry.register(Outside)  # a plug-in from elsewhere comes after the package's own
    assert list(registry.all()) == ["a_first", "b_second", "c_third", "outside"]
    assert list(registry.all(lambda cls: cls.name != "b_second")) == ["a_first", "c_third", "outside"]
