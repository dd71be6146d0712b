"""Start the preprocess service: ``python -m genwire_preprocess``."""

from genwire.service import run
from genwire_preprocess.app import SERVICE

if __name__ == "__main__":
    run(SERVICE)
