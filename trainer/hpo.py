"""``python -m trainer.hpo``: the entry point; the code lives in ``trainer.study.hpo``."""
import sys

from .study.hpo import main

if __name__ == "__main__":
    sys.exit(main())
