"""Start the gateway service: ``python -m genwire_gateway``."""

from genwire.service import run
from genwire_gateway.app import SERVICE

if __name__ == "__main__":
    run(SERVICE)
