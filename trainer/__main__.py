"""``python -m trainer --method lora --dataset ham10000 --data-dir DATA`` (see ``--help``)."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from adapters import MethodError

    from .config import ConfigError, parse_config

    try:
        from . import run

        run(parse_config(argv))
    except (ConfigError, MethodError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # data errors etc.: a plain message, not a traceback
        from .data import DataError

        if isinstance(e, DataError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("interrupted: the last finished epoch is checkpointed; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
