"""Start the monitor service: ``python -m genwire_monitor``."""

from genwire.service import run
from genwire_monitor.app import SERVICE

if __name__ == "__main__":
    run(SERVICE)
