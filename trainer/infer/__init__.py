"""Inference: the adapter store (``store``: find local and Hub adapters, the offline demo adapter, Hub
reachability is ``trainer.preflight``'s), classification with Grad-CAM (``predictor``, ``gradcam``) and text-to-image (``generator``).

May import ``trainer.data``, ``trainer.diffusion``, ``trainer.hub``, ``trainer.preflight``, ``trainer.study.results`` (number
formatting) and ``adapters``; never Gradio, never ``trainer.loops`` or ``trainer.jobs``."""
from ..preflight import hub_reachable
from .generator import Generator, example_reports
from .predictor import LoadedModel, Prediction, Predictor, unique_labels
from .store import (DEMO_NOTE, AdapterInfo, AdapterList, InferenceError, class_names, create_demo_adapter,
                    find_adapters, imagenet_class_names)

__all__ = ["AdapterInfo", "AdapterList", "DEMO_NOTE", "Generator", "InferenceError", "LoadedModel", "Prediction",
           "Predictor", "class_names", "create_demo_adapter", "example_reports", "find_adapters", "hub_reachable",
           "imagenet_class_names", "unique_labels"]
