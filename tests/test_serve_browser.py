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
from mmfm.serve.testing import RunningServer, tiny_folders

from selenium import webdriver  # in the dev extra
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs a headless browser: "
                                "apt-get update && apt-get install -y chromium chromium-driver")
SHOT = Path(os.environ.get("MMFM_SCREENSHOT_DIR", "runs/serve_screenshots"))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    services = load_services(tiny_folders(tmp_path_factory.mktemp("browser")).values(), max_batch=4)
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1100,900"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    with RunningServer(create_app(services)) as url:
        driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
        try:
            driver.get(url + "/")
            yield driver
        finally:
            driver.quit()


def wait(driver, cond, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: cond(d))


def choose(driver, model_id):
    from selenium.webdriver.support.ui import Select

    wait(driver, lambda d: len(d.find_elements("css selector", "#model option")) == 3)
    Select(driver.find_element("id", "model")).select_by_value(model_id)


def test_every_panel(page, tmp_path):
    d = page
    choose(d, "gpt")
    assert d.find_element("id", "gpt-panel").is_displayed() and not d.find_element("id", "clip-panel").is_displayed()
    box = d.find_element("id", "gpt-prompt")
    box.clear()
    box.send_keys("Hello")
    d.find_element("id", "gpt-max").clear()
    d.find_element("id", "gpt-max").send_keys("20")
    d.find_element("id", "gpt-run").click()
    wait(d, lambda d: d.find_element("id", "gpt-output").get_attribute("data-done") == "1")
    assert d.find_element("id", "gpt-output").text.startswith("Hello")
    assert len(d.find_element("id", "gpt-output").text) > len("Hello")
    SHOT.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(SHOT / "gpt.png"))

    choose(d, "clip")
    img = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (220, 20, 20)).save(img)
    d.find_element("id", "clip-file").send_keys(str(img))
    wait(d, lambda d: d.find_element("id", "clip-preview").is_displayed())
    d.find_element("id", "clip-run").click()
    wait(d, lambda d: len(d.find_elements("css selector", "#clip-results .bar-row")) == 4)
    labels = [e.text for e in d.find_elements("css selector", "#clip-results .label")]
    assert sorted(labels) == ["bird", "car", "cat", "dog"]
    d.save_screenshot(str(SHOT / "clip.png"))

    choose(d, "dit")
    assert [o.text for o in d.find_elements("css selector", "#dit-class option")] == ["circle", "square", "triangle"]
    d.find_element("id", "dit-steps").clear()
    d.find_element("id", "dit-steps").send_keys("2")
    d.find_element("id", "dit-run").click()
    wait(d, lambda d: len(d.find_elements("css selector", "#dit-grid img")) == 8)
    src = d.find_elements("css selector", "#dit-grid img")[0].get_attribute("src")
    assert Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size == (16, 16)
    d.save_screenshot(str(SHOT / "dit.png"))
    assert d.find_element("id", "error").text == ""
