"""ophyd devices and Bluesky plans: the same plans drive simulated and real instruments."""
