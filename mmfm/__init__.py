"""mmfm: one Transformer stack for GPT, ViT, CLIP and DiT, from pretraining to domain fine-tuning.

    import mmfm
    model = mmfm.build_model("gpt-test", n_layer=4)
    model.save_pretrained("out/gpt");  same = mmfm.build_model("out/gpt")
"""
from . import models  # noqa: F401  (registers the presets)
from .config import ConfigError
from .registry import build_model, get_config, list_models

__version__ = "0.1.0"
__all__ = ["build_model", "list_models", "get_config", "ConfigError"]
