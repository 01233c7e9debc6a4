"""MedPEFT trainer: data, the training loops, HPO, metrics, Hub, inference helpers."""


def run(cfg, report=None) -> dict:
    """Run one configured job (classification or generation); returns its results dict."""
    if cfg.task == "generation":
        from .loops.generate import run as run_generation

        return run_generation(cfg)
    from .loops.classify import run as run_classification

    return run_classification(cfg, report=report)
