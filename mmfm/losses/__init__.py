"""mmfm.losses"""
from .preference import preference_loss

__all__ = ["preference_loss"]
