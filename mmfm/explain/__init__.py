"""Explanations for image classifiers: Grad-CAM (timm CNNs and mmfm ViTs), attention rollout (ViTs), overlays,
deletion-curve faithfulness, and `python -m mmfm.explain MODEL_DIR IMAGE --method gradcam|rollout --out PNG`."""
from .faithfulness import deletion_curve, delete_patches, patch_order
from .maps import METHODS, attention_probs, explain, gradcam, rollout, tokens_to_grid
from .overlay import display_image, save_explanations, save_overlays

__all__ = ["deletion_curve", "delete_patches", "patch_order", "METHODS", "attention_probs", "explain", "gradcam",
           "rollout", "tokens_to_grid", "display_image", "save_explanations", "save_overlays"]
