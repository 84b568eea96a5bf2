"""Weight conversion to and from peer libraries (HF GPT-2, open_clip, timm, diffusers DiT), both ways.

Functions are imported lazily so that `import mmfm.interop` does not import every peer library.
"""
import importlib

_FUNCS = {
    "from_hf_gpt2": "hf_gpt2", "to_hf_gpt2": "hf_gpt2",
    "from_hf_bert": "hf_bert", "to_hf_bert": "hf_bert",
    "from_hf_t5": "hf_t5", "to_hf_t5": "hf_t5",
    "from_open_clip": "open_clip", "to_open_clip": "open_clip",
    "from_timm_vit": "timm_vit", "to_timm_vit": "timm_vit",
    "from_diffusers_dit": "diffusers_dit", "to_diffusers_dit": "diffusers_dit",
    "export_dit_pipeline": "dit_pipeline",
}
__all__ = sorted(_FUNCS)


def __getattr__(name):
    if name in _FUNCS:
        return getattr(importlib.import_module(f".{_FUNCS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
