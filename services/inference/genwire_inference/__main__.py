"""Start the inference service: ``python -m genwire_inference``."""

from genwire.service import run
from genwire_inference.app import SERVICE

if __name__ == "__main__":
    run(SERVICE)
