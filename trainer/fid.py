"""``python -m trainer.fid``: the entry point; the code lives in ``trainer.loops.fid``."""
import sys

from .loops.fid import main

if __name__ == "__main__":
    sys.exit(main())
