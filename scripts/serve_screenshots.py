"""Screenshots of `mmfm serve`'s web page with trained models, for docs/serving.md: each panel is used in headless
Chromium (Debian's chromium + chromium-driver, selenium) and saved as docs/img/serve_{gpt,clip,dit}.png.

    python scripts/serve_screenshots.py --gpt runs/align/sft/model --chat "What is 27+48?" \
        --clip runs/clip/model --image some.png --labels "a cat, a dog, the digit 3" \
        --dit runs/dit/model --dit-class 7 --out docs/img

Any of --gpt/--clip/--dit may be left out; the page's own controls are filled in the way a user would.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def save_page(d, path: Path) -> None:
    """Screenshot of the whole page: the window is resized to the page's height first."""
    page, inner = d.execute_script("return [document.documentElement.scrollHeight, window.innerHeight]")
    window = d.get_window_size()
    d.set_window_size(window["width"], page + window["height"] - inner + 16)  # + the browser's own bars
    d.save_screenshot(str(path))


def shoot_gpt(d, mid: str, n: int, prompt: str, chat: bool, max_tokens: int, temperature: float, out: Path) -> str:
    from mmfm.serve.testing import choose_model, fill, wait_for

    choose_model(d, mid, n)
    fill(d, "gpt-prompt", prompt)
    fill(d, "gpt-max", max_tokens)
    fill(d, "gpt-temp", temperature)
    if d.find_element("id", "gpt-chat").is_selected() != chat:
        d.find_element("id", "gpt-chat").click()
    d.find_element("id", "gpt-run").click()
    wait_for(d, lambda d: d.find_element("id", "gpt-output").get_attribute("data-done") == "1", timeout=300)
    save_page(d, out / "serve_gpt.png")
    return d.find_element("id", "gpt-output").text


def shoot_clip(d, mid: str, n: int, image: Path, labels: str, template: str, out: Path) -> str:
    from mmfm.serve.testing import choose_model, fill, wait_for

    choose_model(d, mid, n)
    d.find_element("id", "clip-file").send_keys(str(image.resolve()))
    wait_for(d, lambda d: d.find_element("id", "clip-preview").is_displayed())
    fill(d, "clip-labels", labels)
    fill(d, "clip-template", template)
    d.find_element("id", "clip-run").click()
    n_labels = len([x for x in labels.split(",") if x.strip()])
    wait_for(d, lambda d: len(d.find_elements("css selector", "#clip-results .bar-row")) == n_labels, timeout=300)
    save_page(d, out / "serve_clip.png")
    return d.find_element("id", "clip-results").text


def shoot_dit(d, mid: str, n: int, cls: str, images: int, steps: int, guidance: float, out: Path) -> int:
    from selenium.webdriver.support.ui import Select

    from mmfm.serve.testing import choose_model, fill, wait_for

    choose_model(d, mid, n)
    if cls:
        Select(d.find_element("id", "dit-class")).select_by_visible_text(cls)
    fill(d, "dit-n", images)
    fill(d, "dit-steps", steps)
    fill(d, "dit-guidance", guidance)
    d.find_element("id", "dit-run").click()
    wait_for(d, lambda d: len(d.find_elements("css selector", "#dit-grid img")) == images, timeout=600)
    save_page(d, out / "serve_dit.png")
    return images


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpt"), p.add_argument("--clip"), p.add_argument("--dit")
    p.add_argument("--prompt", default="ROMEO:\n"), p.add_argument("--chat", action="store_true")
    p.add_argument("--max-tokens", type=int, default=120), p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--image", type=Path), p.add_argument("--labels", default="cat, dog, bird, car")
    p.add_argument("--template", default="{}")
    p.add_argument("--dit-class", default=""), p.add_argument("--dit-images", type=int, default=8)
    p.add_argument("--dit-steps", type=int, default=20), p.add_argument("--dit-guidance", type=float, default=4.0)
    p.add_argument("--height", type=int, default=300, help="first window height; each screenshot grows it to the page")
    p.add_argument("--out", type=Path, default=Path("docs/img"))
    a = p.parse_args(argv)
    if a.clip and not a.image:
        p.error("--clip needs --image (the picture to classify)")
    from mmfm.serve import create_app, load_services, model_id
    from mmfm.serve.testing import RunningServer, headless_chromium

    folders = [f for f in (a.gpt, a.clip, a.dit) if f]
    if not folders:
        p.error("give at least one of --gpt, --clip, --dit")
    a.out.mkdir(parents=True, exist_ok=True)
    with RunningServer(create_app(load_services(folders, max_batch=8))) as url:
        d = headless_chromium(height=a.height)
        try:
            d.get(url + "/")
            if a.gpt:
                print("gpt:", shoot_gpt(d, model_id(Path(a.gpt)), len(folders), a.prompt, a.chat, a.max_tokens,
                                        a.temperature, a.out))
            if a.clip:
                print("clip:", shoot_clip(d, model_id(Path(a.clip)), len(folders), a.image, a.labels, a.template,
                                          a.out).replace("\n", " | "))
            if a.dit:
                shoot_dit(d, model_id(Path(a.dit)), len(folders), a.dit_class, a.dit_images, a.dit_steps,
                          a.dit_guidance, a.out)
                print("dit: grid of", a.dit_images)
            err = d.find_element("id", "error").text
            if err:
                raise SystemExit(f"the page showed an error: {err}")
        finally:
            d.quit()
    print("screenshots in", a.out)


if __name__ == "__main__":
    main()
