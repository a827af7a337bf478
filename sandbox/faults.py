"""Injected faults and latency, looked up by request path (one dict lookup per call)."""

from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass
class Fault:
    """Answer calls to ``path`` with ``status`` and ``error_code`` instead of serving them.

    ``times`` caps how many calls fail (``None``: no cap); ``rate`` is the chance each call fails
    (``None``: every call). With neither, every call fails until the fault is cleared.
    """

    path: str
    status: int
    error_code: str
    error_type: str
    times: int | None = None
    rate: float | None = None
    retry_after: int | None = None


class FaultTable:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._faults: dict[str, Fault] = {}

    def set(self, fault: Fault) -> None:
        if not fault.path.startswith("/"):
            raise ValueError("path must start with '/'")
        if not 100 <= fault.status <= 599:
            raise ValueError("status must be an HTTP status")
        if fault.times is not None and fault.times < 1:
            raise ValueError("times must be >= 1")
        if fault.rate is not None and not 0.0 <= fault.rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        if fault.retry_after is not None and fault.retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        self._faults[fault.path] = fault

    def clear(self) -> None:
        self._faults.clear()

    def draw(self, path: str) -> Fault | None:
        """The fault this call to ``path`` meets, if any; spends one of its ``times``."""
        fault = self._faults.get(path)
        if fault is None:
            return None
        if fault.rate is not None and self._rng.random() >= fault.rate:
            return None
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                del self._faults[path]
        return fault

    def __len__(self) -> int:
        return len(self._faults)


class LatencyTable:
    """Milliseconds to wait before serving a path: its own value, else the global one."""

    def __init__(self, default_ms: float) -> None:
        self.default_ms = default_ms
        self._by_path: dict[str, float] = {}

    def set(self, path: str | None, ms: float) -> None:
        if ms < 0:
            raise ValueError("latency must be >= 0")
        if path is None:
            self.default_ms = ms
        else:
            self._by_path[path] = ms

    def seconds(self, path: str) -> float:
        return self._by_path.get(path, self.default_ms) / 1000.0
