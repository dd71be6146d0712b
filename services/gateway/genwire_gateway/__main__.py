"""Start the gateway service: ``python -m genwire_gateway``."""

from genwire.service import serve
from genwire.telemetry import configure_logging
from genwire_gateway.app import create_app
from genwire_gateway.config import GatewaySettings


def main() -> None:
    """Read settings from the environment and serve until SIGTERM."""
    settings = GatewaySettings()
    configure_logging(settings.log_level, settings.log_json)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
