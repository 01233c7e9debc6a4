"""Inference: the adapter store (``store``: find local and Hub adapters, the offline demo adapter, Hub
reachability is ``trainer.preflight``'s), Hub search and pull (``discover``), many adapters on one frozen
base (``serving``, ``structures``), classification with Grad-CAM (``predictor``, ``gradcam``) and text-to-image (``generator``).

May import ``trainer.data``, ``trainer.diffusion``, ``trainer.hub``, ``trainer.card`` (the discovery tags and
card metrics), ``trainer.preflight``, ``trainer.study.results`` (number formatting) and ``adapters``; never
Gradio, never ``trainer.loops`` or ``trainer.jobs``."""
from ..preflight import hub_reachable
from .discover import HubAdapter, HubListing, adapter_listing, search_hub
from .generator import Generator, example_reports
from .predictor import Comparison, CompareRow, LoadedModel, Prediction, Predictor, unique_labels
from .serving import AdapterServer, ServedAdapter
from .store import (DEMO_NOTE, AdapterInfo, AdapterList, InferenceError, class_names, create_demo_adapter,
                    find_adapters, imagenet_class_names)

__all__ = ["AdapterInfo", "AdapterList", "AdapterServer", "CompareRow", "Comparison", "DEMO_NOTE", "Generator",
           "HubAdapter", "HubListing", "InferenceError", "LoadedModel", "Prediction", "Predictor", "ServedAdapter",
           "adapter_listing", "class_names", "create_demo_adapter", "example_reports", "find_adapters",
           "hub_reachable", "imagenet_class_names", "search_hub", "unique_labels"]
