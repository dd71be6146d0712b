"""The simulation helpers live in the package (the bench uses them too)."""

from genwire_monitor.simulate import SCALE, fast_settings, run, traffic

__all__ = ["SCALE", "fast_settings", "run", "traffic"]
