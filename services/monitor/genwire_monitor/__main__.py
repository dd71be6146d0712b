"""Start the monitor service: ``python -m genwire_monitor``."""

from genwire.service import serve
from genwire.telemetry import configure_logging
from genwire_monitor.app import create_app
from genwire_monitor.config import MonitorSettings


def main() -> None:
    """Read settings from the environment and serve until SIGTERM."""
    settings = MonitorSettings()
    configure_logging(settings.log_level, settings.log_json)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
