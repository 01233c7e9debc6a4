"""Shared test helpers: tiny adapters, tiny image folders, a running app, a Hub double (hubserver)."""
from .apps import CLASSES, free_port, make_adapter, retina_png, start_app
from .images import write_digits, write_shapes

__all__ = ["CLASSES", "free_port", "make_adapter", "retina_png", "start_app", "write_digits", "write_shapes"]
