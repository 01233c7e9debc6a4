"""``python -m trainer.hpo``: the entry point. ASHA search (``trainer.study.hpo``); with ``--task generation``
or ``--objectives``, the multi-objective NSGA-II search of text-to-image runs (``trainer.study.hpo_generation``)."""
import sys


def main(argv: list[str] | None = None) -> int:
    from .study import hpo_generation

    argv = sys.argv[1:] if argv is None else list(argv)
    if hpo_generation.wants(argv):
        return hpo_generation.main(argv)
    from .study.hpo import main as asha

    return asha(argv)


if __name__ == "__main__":
    sys.exit(main())
