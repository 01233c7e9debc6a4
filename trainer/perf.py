"""``python -m trainer.perf``: the entry point; the code lives in ``trainer.study.perf``."""
import sys

from .study.perf import main

if __name__ == "__main__":
    sys.exit(main())
