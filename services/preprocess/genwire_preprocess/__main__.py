"""Start the preprocess service: ``python -m genwire_preprocess``."""

from genwire.service import serve
from genwire.telemetry import configure_logging
from genwire_preprocess.app import create_app
from genwire_preprocess.config import PreprocessSettings


def main() -> None:
    """Read settings from the environment and serve until SIGTERM."""
    settings = PreprocessSettings()
    configure_logging(settings.log_level, settings.log_json)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
