"""The simulation helpers live with the monitor benchmark (genwire_bench.monitor) that uses them."""

from genwire_bench.monitor.simulate import SCALE, fast_settings, run, traffic

__all__ = ["SCALE", "fast_settings", "run", "traffic"]
