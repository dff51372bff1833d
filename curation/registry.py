"""Name -> implementation registries that plugins extend: captioners, fusers, export formats.

Built-ins register in code. A plugin package adds entries under the entry-point
group ``altlens.<kind>s`` in its own package metadata (the demo's captioner does
so), so the product never imports it. Entry points are read on the first lookup
of a name that is not registered yet, or when the names are listed.
"""
from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Registry(Generic[T]):
    """Named implementations of one kind (``captioner``, ``fuser``, ``export format``)."""

    def __init__(self, kind: str, group: str):
        self.kind, self.group = kind, group
        self._items: dict[str, T] = {}
        self._plugins_read = False

    def register(self, name: str, item: T) -> T:
        """Add ``item`` under ``name``; a second, different item under a taken name is refused."""
        if self._items.get(name, item) is not item:
            raise ValueError(f"{self.kind} {name!r} is registered already")
        self._items[name] = item
        return item

    def find(self, name: str) -> T | None:
        """The item registered as ``name`` (reading plugins if needed), or None."""
        if name not in self._items:
            self._read_plugins()
        return self._items.get(name)

    def names(self) -> list[str]:
        self._read_plugins()
        return list(self._items)

    def _read_plugins(self) -> None:
        if self._plugins_read:
            return
        self._plugins_read = True
        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                continue
            try:
                self._items[ep.name] = ep.load()
            except Exception as exc:  # a broken plugin must not take the built-ins down with it
                log.warning("cannot load %s plugin %r (%s): %s", self.kind, ep.name, ep.value, exc)
