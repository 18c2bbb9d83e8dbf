"""Athanor: autonomous-lab orchestration for materials discovery.

The Python API (athanor/api.py) is reached from here, imported on first use so that `import athanor`
stays light: `athanor.load(path)`, `athanor.run(config, ...)`, `athanor.open_run(folder)`, `athanor.Run`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from athanor.errors import AthanorError, SpecError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from athanor.api import Run, load, open_run, run
    from athanor.spec import Campaign

_LAZY = {"load": "athanor.api", "run": "athanor.api", "open_run": "athanor.api", "Run": "athanor.api",
         "Campaign": "athanor.spec"}

__all__ = ["AthanorError", "Campaign", "Run", "SpecError", "load", "open_run", "run"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # found directly next time
        return value
    raise AttributeError(f"module 'athanor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
