"""Tiny untrained model folders of every served family, for tests and for trying the server without a run.

    folders = tiny_folders("/tmp/mmfm-tiny")   # {"gpt": Path, "clip": Path, "dit": Path}
    # mmfm serve /tmp/mmfm-tiny/gpt /tmp/mmfm-tiny/clip /tmp/mmfm-tiny/dit
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

CLASSES = ["circle", "square", "triangle"]


def tiny_gpt(path: Path, seed: int = 0) -> Path:
    """gpt-test with the chat template's char tokenizer (so both completions and chat are served)."""
    import mmfm
    from mmfm.align.chat import build_tokenizer

    torch.manual_seed(seed)
    tok = build_tokenizer()
    model = mmfm.build_model("gpt-test", vocab_size=tok.vocab_size)
    model.tokenizer = tok
    return model.save_pretrained(path)


def tiny_clip(path: Path, seed: int = 0) -> Path:
    import mmfm
    from mmfm.tokenizers import CharTokenizer

    torch.manual_seed(seed)
    tok = CharTokenizer(string.printable)
    model = mmfm.build_model("clip-test", vocab_size=tok.vocab_size, eot_token_id=tok.eos_id)
    model.tokenizer = tok
    return model.save_pretrained(path)


def tiny_dit(path: Path, seed: int = 0) -> Path:
    """dit-test (16x16 grayscale) with a scheduler and the class names a trained folder has."""
    import mmfm
    from mmfm.diffusion import make_train_scheduler, save_scheduler

    torch.manual_seed(seed)
    model = mmfm.build_model("dit-test", num_classes=len(CLASSES))
    path = model.save_pretrained(path)
    save_scheduler(make_train_scheduler(), path)
    (path / "diffusion.json").write_text(json.dumps({"class_names": CLASSES}))
    return path


def tiny_folders(root: str | Path) -> dict[str, Path]:
    root = Path(root)
    return {"gpt": tiny_gpt(root / "gpt"), "clip": tiny_clip(root / "clip"), "dit": tiny_dit(root / "dit")}


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RunningServer:
    """`with RunningServer(app) as url:` a uvicorn server for `app` on a free loopback port in a thread, stopped
    (and its models' workers closed) on exit."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None):
        import uvicorn

        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning"))
        self.thread = None

    def __enter__(self) -> str:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, name="mmfm-test-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the test server did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
