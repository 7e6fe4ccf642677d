"""Plug-in registries: one class per plug-in, registered by a decorator, found by importing a package.

Drift monitors and rollout gates are plug-ins (timm registers models the same way): adding one is
adding one module to its package; nothing else lists them.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import ClassVar, Generic, Protocol, TypeVar


class Named(Protocol):
    name: ClassVar[str]


P = TypeVar("P", bound=Named)


class PluginRegistry(Generic[P]):
    """Classes keyed by their ``name`` attribute, discovered in the modules of ``package``."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind, self.package = kind, package
        self._plugins: dict[str, type[P]] = {}
        self._discovered = False
        self._modules: list[str] = []  # the package's modules, in discovery order

    def register(self, cls: type[P]) -> type[P]:
        """Class decorator: register ``cls`` under ``cls.name``.

        Raises:
            ValueError: another class already has that name.
        """
        if cls.name in self._plugins and self._plugins[cls.name] is not cls:
            raise ValueError(f"two {self.kind}s are named {cls.name!r}: rename one of them")
        self._plugins[cls.name] = cls
        return cls

    def all(self, where: Callable[[type[P]], bool] = lambda _: True) -> dict[str, type[P]]:
        """Every plug-in of the package (its modules imported first) that ``where`` keeps, by name."""
        if not self._discovered:  # once: the drift stage asks on every window
            package = importlib.import_module(self.package)
            self._modules = [f"{self.package}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
            for module in self._modules:
                importlib.import_module(module)
            self._discovered = True
        # the package's own in the order of its modules, whichever was imported first, then the rest
        # in registration order: gates run in this order, and it must not depend on import order
        rank = {module: i for i, module in enumerate(self._modules)}
        ordered = sorted(self._plugins.items(), key=lambda kv: rank.get(kv[1].__module__, len(rank)))
        return {name: cls for name, cls in ordered if where(cls)}

    def snapshot(self) -> dict[str, type[P]]:
        """The registered classes now (tests restore them with :meth:`restore`)."""
        return dict(self._plugins)

    def restore(self, plugins: dict[str, type[P]]) -> None:
        self._plugins = dict(plugins)
