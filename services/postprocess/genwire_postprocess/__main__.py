"""Start the postprocess service: ``python -m genwire_postprocess``."""

from genwire.service import run
from genwire_postprocess.app import SERVICE

if __name__ == "__main__":
    run(SERVICE)
