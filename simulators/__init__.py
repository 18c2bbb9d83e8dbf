"""Ground-truth worlds for simulated labs. A world knows nothing of agents or Ray."""
