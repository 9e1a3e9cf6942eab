"""Name -> `module:attribute`, imported on first use: the one mechanism behind the backend,
compile-target, model-family and stage-kind registries. Importing lazily is what keeps
`tensorrt` (or torch) out of a process that never asks for it."""

from __future__ import annotations

import importlib

from streetcascade.errors import BackendUnavailable, ConfigError, StreetcascadeError


class Registry:
    def __init__(self, what: str, entries: dict[str, str], unknown: type[StreetcascadeError] = ConfigError,
                 unavailable: type[StreetcascadeError] | None = BackendUnavailable):
        self.what = what  # for messages: "backend", "model family", ...
        self.entries = entries
        self.unknown = unknown
        self.unavailable = unavailable  # None: an import error is a bug, let it through

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str):
        if name not in self.entries:
            raise self.unknown(f"unknown {self.what} {name!r}; known: {', '.join(self.names())}")
        module_name, _, attribute = self.entries[name].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if self.unavailable is None:
                raise
            raise self.unavailable(f"{self.what} {name!r} cannot be imported here: {exc}") from exc
        return getattr(module, attribute)
