"""``python -m trainer --method lora --dataset ham10000 --data-dir DATA`` (see ``--help``).

Every problem with the command line, the data, the backbone, the Hub or a place the run writes to ends
as one line ``error: ...`` and exit status 2, checked before anything is written (:mod:`trainer.preflight`);
a write that fails later (a full disk) ends the same way, leaving no half-written file that looks finished.
"""
from __future__ import annotations

import sys

from .cli import USAGE


def user_errors() -> tuple[type[Exception], ...]:
    """The project's typed errors: each carries a message meant for the user."""
    from adapters import BackboneError, MethodError

    from .config import ConfigError
    from .data import DataError
    from .hub import HubError

    return ConfigError, MethodError, BackboneError, DataError, HubError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(f"error: nothing to do; usage: {USAGE}", file=sys.stderr)
        return 2
    errors = user_errors()
    try:
        from . import run
        from .cli import parse_config
        from .preflight import preflight

        cfg = preflight(parse_config(argv))
        run(cfg)
    except errors as e:
        print(f"error: {str(e).strip()}", file=sys.stderr)
        return 2
    except Exception as e:  # a filesystem fault while writing (disk full, permission, read-only): one line
        from .preflight import describe_storage_error

        message = describe_storage_error(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        print("interrupted: the last finished epoch is checkpointed; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
