"""Parts chosen by name from the config (models, losses, samplers, class weights...)."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from pipeline.errors import PipelineError

T = TypeVar("T")


class UnknownName(PipelineError, KeyError):
    def __str__(self) -> str:  # KeyError would print the message quoted
        return self.args[0]


class Registry(Generic[T], dict):
    """Name -> part. ``get`` of an unknown name raises ``error`` (default ``UnknownName``) naming the
    close matches and every registered name."""

    def __init__(self, kind: str, error: type[Exception] = UnknownName):
        super().__init__()
        self.kind, self.error = kind, error

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self[name] = obj
            return obj
        return add

    def get(self, name: str) -> T:  # type: ignore[override]
        if name not in self:
            close = difflib.get_close_matches(name, list(self), n=2)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise self.error(f"unknown {self.kind} {name!r}{hint}; registered: {', '.join(sorted(self))}")
        return self[name]
