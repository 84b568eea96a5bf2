"""Serving: `mmfm serve DIR ...` runs an OpenAI-compatible HTTP API (FastAPI + uvicorn) over saved model folders,
with continuous batching for GPT generation, batched CLIP forwards and a web page at /.

    from mmfm.serve import create_app, load_services
    app = create_app(load_services(["runs/gpt_shakespeare/model"]))
"""
from .app import create_app, load_services, model_id, serve
from .engine import Engine, Job

__all__ = ["create_app", "load_services", "model_id", "serve", "Engine", "Job"]
