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


def headless_chromium(width: int = 1100, height: int = 900):
    """A selenium Chrome driver on Debian's headless chromium + chromium-driver (apt-get install -y chromium
    chromium-driver); raises RuntimeError naming the install line when they are missing."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        raise RuntimeError("needs a headless browser: apt-get update && apt-get install -y chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):
        opts.add_argument(arg)
    opts.binary_location = binary
    return webdriver.Chrome(service=Service(driver), options=opts)


def wait_for(driver, cond, timeout: float = 60):
    """Wait until `cond(driver)` is truthy (selenium's WebDriverWait); returns its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: cond(d))


def choose_model(driver, model_id: str, n_models: int) -> None:
    """Pick `model_id` in the page's model menu once all `n_models` are listed."""
    from selenium.webdriver.support.ui import Select

    wait_for(driver, lambda d: len(d.find_elements("css selector", "#model option")) == n_models)
    Select(driver.find_element("id", "model")).select_by_value(model_id)


def fill(driver, element_id: str, value) -> None:
    box = driver.find_element("id", element_id)
    box.clear()
    box.send_keys(str(value))
