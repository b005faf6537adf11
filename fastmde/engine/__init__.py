"""Training, evaluation, prediction and the paper's sweep protocol.

``train(TrainConfig(...))`` / ``Trainer``, ``evaluate(model, dataset, protocol)``,
``load(checkpoint)``, ``predict_images``, ``run_sweep``; the ``fastmde train|eval|predict|sweep``
commands live in the modules of the same names.
"""
from .checkpoint import CheckpointError, load, read_checkpoint
from .config import TrainConfig
from .evaluate import evaluate
from .predict import predict_images
from .protocols import PROTOCOLS, Protocol, get_protocol
from .sweep import run_sweep
from .train import Trainer, train

__all__ = [
    "CheckpointError", "PROTOCOLS", "Protocol", "TrainConfig", "Trainer", "evaluate", "get_protocol",
    "load", "predict_images", "read_checkpoint", "run_sweep", "train",
]
