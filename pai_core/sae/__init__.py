"""Sparse autoencoders on policy tokens: model, saving/loading, per-frame features."""

from .io import load_sae, save_sae
from .model import SAEConfig, SparseAutoencoder

__all__ = ["SAEConfig", "SparseAutoencoder", "load_sae", "save_sae"]
