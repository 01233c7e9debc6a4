"""The two training loops (classification, generation) and what they share: optimisation,
checkpoints, cached features, metrics, FID. May import ``trainer.data``, ``trainer.config``,
``trainer.hub`` and ``adapters``; never Gradio, never ``trainer.study``/``trainer.infer``/``trainer.jobs``."""
