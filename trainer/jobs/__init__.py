"""What the app's Train tab runs, testable without Gradio: ``upload`` (safe zip extraction, dataset
checks), ``options`` (backbones, methods per family, the form as a validated TrainConfig),
``session`` (the background job, one training at a time, queue and Stop, scratch folders),
``quick_hpo`` (a few optuna trials, then the final run), ``progress`` (phase, fraction, curves from
job events), ``runs`` (run folders, results.json, the finished run's summary).
May import the rest of ``trainer`` and ``adapters``; never Gradio, never ``ui``."""
