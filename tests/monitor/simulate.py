"""The simulation helpers live with the monitor benchmark (genwire_bench.monitor) that uses them.

``fast_settings`` here also turns the alert-state, config and feedback topics off unless a test
names one: a test monitor must never rebuild, or write, the shared stack's alert state
(``genwire.alert-state``), follow (and roll back) the shared policies (``genwire.config``) or
count the shared feedback.
"""

from genwire_bench.monitor.simulate import SCALE, run, traffic
from genwire_bench.monitor.simulate import fast_settings as _fast_settings
from genwire_monitor.config import MonitorSettings


def fast_settings(**overrides: object) -> MonitorSettings:
    """The benchmark's fast settings, with no alert-state topic unless ``overrides`` set one."""
    return _fast_settings(
        **{"alert_state_topic": "", "config_topic": "", "feedback_topic": "", **overrides}
    )


__all__ = ["SCALE", "fast_settings", "run", "traffic"]
