"""CHGNet, loaded once per process and silenced, and a JSON disk cache for what it computes.

`relax(structure)` relaxes atoms and cell with CHGNet's `StructOptimizer` (FIRE on ASE's
UnitCellFilter: the default FrechetCellFilter's matrix logarithm made each step 10x dearer on a
busy 2-core machine, for lattice parameters within 0.003 Å of it). The model loads on first use
only, so building a world stays cheap.

Torch threads: small cells are latency-bound, and torch's multi-threaded kernels slow a 5-atom
step by 10-100x when the cores are shared (a 2-core machine running other work). The first load
therefore sets `torch.set_num_threads(ATHANOR_TORCH_THREADS)` (default 1; 0 leaves torch alone).

`DiskCache` keeps one JSON file per result in `<cache_dir>/<namespace>/<hash>.json`, the hash taken
over the whole key (which names what was computed, the relaxation settings and the CHGNet version);
the key is stored beside the value. Files are written atomically, so processes can share a folder.
`cache_dir` defaults to `$ATHANOR_CACHE`, else `~/.cache/athanor`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

from athanor.errors import AthanorError

MODEL_NAME = "0.3.0"
_OPTIMIZER: Any = None
_MEMORY: dict[tuple[str, str], dict[str, Any]] = {}
calls = {"load": 0, "relax": 0}  # how often CHGNet was loaded and run in this process (tests, benchmarks)


def chgnet_version() -> str:
    try:
        return f"chgnet {version('chgnet')} / model {MODEL_NAME}"
    except PackageNotFoundError:
        raise AthanorError("the perovskite world needs CHGNet: pip install chgnet") from None


@contextlib.contextmanager
def quiet():
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def optimizer() -> Any:
    """CHGNet's structure optimizer, loaded once per process."""
    global _OPTIMIZER
    if _OPTIMIZER is None:
        chgnet_version()
        import torch

        threads = int(os.environ.get("ATHANOR_TORCH_THREADS", "1"))
        if threads > 0:
            torch.set_num_threads(threads)
        with quiet():
            from chgnet.model import CHGNet, StructOptimizer

            model = CHGNet.load(model_name=MODEL_NAME, use_device="cpu", verbose=False)
            _OPTIMIZER = StructOptimizer(model=model, use_device="cpu")
        calls["load"] += 1
    return _OPTIMIZER


def relax(structure: Any, *, fmax: float, steps: int) -> dict[str, Any]:
    """Relax atoms and cell; the final structure, its energy per atom (eV) and the steps taken."""
    opt = optimizer()
    calls["relax"] += 1
    with quiet():
        result = opt.relax(structure, fmax=fmax, steps=steps, relax_cell=True, ase_filter="UnitCellFilter",
                           verbose=False)
    final = result["final_structure"]
    energies = result["trajectory"].energies
    return {"structure": final, "energy_per_atom": float(energies[-1]) / len(final), "steps": len(energies)}


def default_cache_dir() -> Path:
    return Path(os.environ.get("ATHANOR_CACHE") or Path.home() / ".cache" / "athanor")


class DiskCache:
    """JSON results keyed by a hash of their key; a per-process memory in front of the files."""

    def __init__(self, folder: str | Path | None, namespace: str):
        self.folder = Path(folder).expanduser() if folder else default_cache_dir()
        self.folder = self.folder / namespace

    @staticmethod
    def digest(key: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        key = json.loads(json.dumps(key))  # as it reads back from the file (tuples become lists)
        digest = self.digest(key)
        memo = _MEMORY.get((str(self.folder), digest))
        if memo is not None:
            return memo
        try:
            stored = json.loads((self.folder / f"{digest}.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(stored, dict) or stored.get("key") != key:
            return None
        _MEMORY[(str(self.folder), digest)] = stored["value"]
        return stored["value"]

    def put(self, key: dict[str, Any], value: dict[str, Any]) -> None:
        digest = self.digest(key)
        _MEMORY[(str(self.folder), digest)] = value
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.folder, suffix=".tmp", delete=False) as handle:
                json.dump({"key": key, "value": value}, handle, indent=1)
            os.replace(handle.name, self.folder / f"{digest}.json")
        except OSError as exc:  # a read-only cache costs time, not correctness
            warnings.warn(f"perovskite cache not written to {self.folder}: {exc}", stacklevel=2)

    def get_or_compute(self, key: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        found = self.get(key)
        if found is None:
            found = compute()
            self.put(key, found)
        return found


def clear_memory() -> None:
    """Forget the in-process copies (the files stay): the next lookup reads the disk."""
    _MEMORY.clear()
