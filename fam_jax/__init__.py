"""fam-jax: TransformerFAM (Feedback Attention Memory) in JAX/Flax."""

from fam_jax.config import FamConfig
from fam_jax.model import FamLM

__all__ = ["FamConfig", "FamLM"]
