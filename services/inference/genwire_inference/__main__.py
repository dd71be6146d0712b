"""Start the inference service: ``python -m genwire_inference``."""

from genwire.service import serve
from genwire.telemetry import configure_logging
from genwire_inference.app import create_app
from genwire_inference.config import InferenceSettings


def main() -> None:
    """Read settings from the environment and serve until SIGTERM."""
    settings = InferenceSettings()
    configure_logging(settings.log_level, settings.log_json)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
