"""The HTTP app: saved model folders -> services by family, OpenAI-shaped routes, /health, the web page at /.

    app = create_app(load_services(["runs/gpt_shakespeare/model", "runs/clip/model"]))
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from .clip import CLIPService
from .dit import DiTService
from .errors import APIError, install_handlers, parse_body
from .gpt import GPTService
from .schemas import ChatRequest, ClassifyRequest, CompletionRequest, EmbeddingRequest, ImageRequest

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
SERVED = ("gpt", "clip", "dit")


def model_id(folder: Path) -> str:
    """A folder's id in requests: its name, or its parent's when it is called 'model' (runs/NAME/model)."""
    folder = Path(folder).resolve()
    return folder.parent.name if folder.name == "model" else folder.name


def load_services(folders, max_batch: int = 32) -> dict:
    """{id: service} for saved model folders (GPT, CLIP, DiT); ids are made unique with -2, -3 ..."""
    import mmfm

    services = {}
    for folder in map(Path, folders):
        model = mmfm.build_model(folder)
        family = model.config.family
        if family not in SERVED:
            raise ValueError(f"{folder}: a {family} model; mmfm serve serves {', '.join(SERVED)} folders")
        name, k = model_id(folder), 2
        while name in services:
            name, k = f"{model_id(folder)}-{k}", k + 1
        if family == "gpt":
            services[name] = GPTService(name, model, max_batch)
        elif family == "clip":
            services[name] = CLIPService(name, model, max_batch=max(max_batch, 1))
        else:
            services[name] = DiTService(name, model, folder)
        log.info("serving %s (%s, %s params) as %r", folder, family, f"{model.num_params():,}", name)
    return services


def create_app(services: dict, max_body_bytes: int = 8 * 2**20) -> FastAPI:
    """The FastAPI app over loaded services (see load_services)."""
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        yield
        for s in services.values():
            s.close()

    app = FastAPI(title="mmfm serve", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.services = services
    install_handlers(app, max_body_bytes)

    def get(model: str, family: str, endpoint: str):
        if model not in services:
            raise APIError(404, f"The model '{model}' does not exist; served: {', '.join(services)}", "model",
                           "model_not_found")
        s = services[model]
        if s.family != family:
            raise APIError(400, f"model '{model}' is a {s.family} model; {endpoint} serves {family} models", "model")
        return s

    def card(name: str, s) -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "mmfm", **s.describe()}

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(services)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card(k, s) for k, s in services.items()]}

    @app.get("/v1/models/{name}")
    async def one_model(name: str):
        if name not in services:
            raise APIError(404, f"The model '{name}' does not exist", "model", "model_not_found")
        return card(name, services[name])

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await parse_body(request, CompletionRequest)
        return await get(req.model, "gpt", "/v1/completions").completions(req)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await parse_body(request, ChatRequest)
        return await get(req.model, "gpt", "/v1/chat/completions").chat_completions(req)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        req = await parse_body(request, EmbeddingRequest)
        return JSONResponse(await get(req.model, "clip", "/v1/embeddings").embeddings(req))

    @app.post("/v1/classify")
    async def classify(request: Request):
        req = await parse_body(request, ClassifyRequest)
        return JSONResponse(await get(req.model, "clip", "/v1/classify").classify(req))

    @app.post("/v1/images/generations")
    async def images(request: Request):
        req = await parse_body(request, ImageRequest)
        return JSONResponse(await get(req.model, "dit", "/v1/images/generations").generate(req))

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def serve(folders, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 32, max_body_mb: float = 8.0,
          log_level: str = "info") -> None:
    """Load the folders and run the server until interrupted."""
    import uvicorn

    app = create_app(load_services(folders, max_batch), int(max_body_mb * 2**20))
    log.info("mmfm serve on http://%s:%d (pid %d)", host, port, os.getpid())
    uvicorn.run(app, host=host, port=port, log_level=log_level)
