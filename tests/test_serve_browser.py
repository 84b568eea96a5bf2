"""The web page at / in a real headless browser (Debian's chromium + chromium-driver, selenium): each panel is used
against a served tiny GPT, CLIP and DiT, and a screenshot is saved."""
import base64
import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mmfm.serve import create_app, load_services
from mmfm.serve.testing import RunningServer, choose_model, fill, headless_chromium, tiny_folders, wait_for

import selenium  # noqa: F401  (in the dev extra)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs a headless browser: "
                                "apt-get update && apt-get install -y chromium chromium-driver")
SHOT = Path(os.environ.get("MMFM_SCREENSHOT_DIR", "runs/serve_screenshots"))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    services = load_services(tiny_folders(tmp_path_factory.mktemp("browser")).values(), max_batch=4)
    with RunningServer(create_app(services)) as url:
        driver = headless_chromium()
        try:
            driver.get(url + "/")
            yield driver
        finally:
            driver.quit()


def choose(driver, model_id):
    choose_model(driver, model_id, n_models=3)


def test_every_panel(page, tmp_path):
    d = page
    choose(d, "gpt")
    assert d.find_element("id", "gpt-panel").is_displayed() and not d.find_element("id", "clip-panel").is_displayed()
    fill(d, "gpt-prompt", "Hello")
    fill(d, "gpt-max", 20)
    d.find_element("id", "gpt-run").click()
    wait_for(d, lambda d: d.find_element("id", "gpt-output").get_attribute("data-done") == "1")
    assert d.find_element("id", "gpt-output").text.startswith("Hello")
    assert len(d.find_element("id", "gpt-output").text) > len("Hello")
    SHOT.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(SHOT / "gpt.png"))

    choose(d, "clip")
    img = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (220, 20, 20)).save(img)
    d.find_element("id", "clip-file").send_keys(str(img))
    wait_for(d, lambda d: d.find_element("id", "clip-preview").is_displayed())
    d.find_element("id", "clip-run").click()
    wait_for(d, lambda d: len(d.find_elements("css selector", "#clip-results .bar-row")) == 4)
    labels = [e.text for e in d.find_elements("css selector", "#clip-results .label")]
    assert sorted(labels) == ["bird", "car", "cat", "dog"]
    d.save_screenshot(str(SHOT / "clip.png"))

    choose(d, "dit")
    assert [o.text for o in d.find_elements("css selector", "#dit-class option")] == ["circle", "square", "triangle"]
    fill(d, "dit-steps", 2)
    d.find_element("id", "dit-run").click()
    wait_for(d, lambda d: len(d.find_elements("css selector", "#dit-grid img")) == 8)
    src = d.find_elements("css selector", "#dit-grid img")[0].get_attribute("src")
    assert Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size == (16, 16)
    d.save_screenshot(str(SHOT / "dit.png"))
    assert d.find_element("id", "error").text == ""


def test_screenshot_script_uses_every_panel(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import serve_screenshots

    f = tiny_folders(tmp_path / "models")
    img = tmp_path / "blue.png"
    Image.new("RGB", (40, 40), (20, 20, 220)).save(img)
    serve_screenshots.main(["--gpt", str(f["gpt"]), "--prompt", "Hi", "--max-tokens", "5", "--clip", str(f["clip"]),
                            "--image", str(img), "--labels", "sea, sky, sand", "--dit", str(f["dit"]),
                            "--dit-class", "square", "--dit-images", "2", "--dit-steps", "2", "--out", str(tmp_path)])
    for name in ("gpt", "clip", "dit"):
        shot = Image.open(tmp_path / f"serve_{name}.png")
        assert shot.width >= 1000 and shot.height >= 200  # the page, grown to its content
