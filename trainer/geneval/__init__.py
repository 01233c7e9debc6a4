"""Generation judged as the field now judges it (CheXGenBench, RoentGen, MemControl), offline:
FID and KID with bootstrap intervals (:mod:`.fidelity`), precision/recall/density/coverage
(:mod:`.prdc`), MS-SSIM diversity (:mod:`.diversity`), memorization of training images with a
calibrated threshold (:mod:`.memorization`), pluggable feature extractors (:mod:`.extractors`), the
noise-norm memorization score of Wen et al. (:mod:`.noise_norm`), and one report (:mod:`.report`,
``python -m trainer.geneval``)."""
from .extractors import Extractor, ExtractorError, resolve
from .images import ImageSet, ImageSetError, load_set
from .report import evaluate, format_report

__all__ = ["Extractor", "ExtractorError", "ImageSet", "ImageSetError", "evaluate", "format_report", "load_set",
           "resolve"]
