"""Start the postprocess service: ``python -m genwire_postprocess``."""

from genwire.service import serve
from genwire.telemetry import configure_logging
from genwire_postprocess.app import create_app
from genwire_postprocess.config import PostprocessSettings


def main() -> None:
    """Read settings from the environment and serve until SIGTERM."""
    settings = PostprocessSettings()
    configure_logging(settings.log_level, settings.log_json)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
