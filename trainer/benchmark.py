"""``python -m trainer.benchmark``: the entry point; the code lives in ``trainer.study.benchmark``."""
import sys

from .study.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
