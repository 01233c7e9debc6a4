"""MedPEFT trainer: data, the training loops, HPO, metrics, Hub, inference helpers."""
