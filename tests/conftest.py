"""Shared fixtures: one Ray instance for the whole session, and small campaign files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import ray

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "liang2021"
P3HT_INPUTS = ["P3HT content (%)", "D1 content (%)", "D2 content (%)", "D6 content (%)", "D8 content (%)"]
P3HT_OBJECTIVE = "Conductivity (measured) (S/cm)"


@pytest.fixture(scope="session")
def ray_address() -> str:
    """Start Ray once; subprocess campaigns join it through this address."""
    # "local": a new instance, never a `ray start` cluster this machine runs (tests/helpers_cluster.py starts some)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A stopped campaign with S0001-S0002 measured and S0003-S0005 awaiting an operator."""
    from helpers_gated import make_gated_run

    return make_gated_run(tmp_path)


def write_campaign(path: Path, *, name: str = "test_campaign", dataset: Path = DATA / "P3HT.csv",
                   inputs: list[str] = P3HT_INPUTS, objective: str = P3HT_OBJECTIVE, budget: int = 8,
                   batch_size: int = 2, strategy: str = "sobol", seed: int = 0, latency_s: float = 0.0,
                   noise: float = 0.0, failure_rate: float = 0.0, approval: str = "auto",
                   wall_time_s: float | None = None) -> Path:
    quoted = ", ".join(f'"{i}"' for i in inputs)
    path.write_text(f"""campaign: {name}
seed: {seed}
space:
  pool:
    dataset: {dataset}
    inputs: [{quoted}]
objectives:
  - name: "{objective}"
    direction: maximize
budget:
  experiments: {budget}
  wall_time_s: {wall_time_s if wall_time_s is not None else "null"}
batch_size: {batch_size}
designer:
  strategy: {strategy}
world:
  kind: replay
  latency_s: {latency_s}
  noise: {noise}
  failure_rate: {failure_rate}
approval:
  policy: {approval}
""")
    return path


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL server for the session (tests/helpers_pg.py); skips where none can run.
    A test that stops it starts it again before it ends."""
    from helpers_pg import PostgresServer, Unavailable

    try:
        server = PostgresServer()
    except Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server.start()
    finally:
        server.cleanup()
