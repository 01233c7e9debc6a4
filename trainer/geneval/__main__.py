"""``python -m trainer.geneval``: the entry point; the code lives in ``trainer.geneval.cli``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
