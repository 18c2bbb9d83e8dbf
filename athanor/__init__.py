"""Athanor: autonomous-lab orchestration for materials discovery."""

__version__ = "0.1.0"
