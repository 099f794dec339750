"""Sparse autoencoders on policy tokens: model, saving/loading, training, per-frame features."""

from .io import load_sae, save_sae
from .model import SAEConfig, SparseAutoencoder
from .train import TrainConfig, evaluate_sae, train_sae

__all__ = ["SAEConfig", "SparseAutoencoder", "TrainConfig", "evaluate_sae", "load_sae", "save_sae", "train_sae"]
