"""Inference: find and pull adapters, predict with them (+ Grad-CAM), generate images.
May import ``trainer.data``, ``trainer.loops`` (generation), ``trainer.hub`` and ``adapters``; never Gradio."""
from .predictor import (AdapterInfo, AdapterList, Generator, InferenceError, Prediction, Predictor, class_names,
                        create_demo_adapter, example_reports, find_adapters, hub_reachable, hub_repos_from_env,
                        imagenet_class_names, unique_labels)

__all__ = ["AdapterInfo", "AdapterList", "Generator", "InferenceError", "Prediction", "Predictor", "class_names",
           "create_demo_adapter", "example_reports", "find_adapters", "hub_reachable", "hub_repos_from_env",
           "imagenet_class_names", "unique_labels"]
