"""The optional caption scripts' parsing and rendering on tiny temp inputs (no Debian packages needed)."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "datasets"
SVG = """<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" width="10" height="10">
 <metadata><rdf:RDF><rdf:Description><dc:title>Red_Apple (Mon Aug 2 2004)</dc:title>
 <dc:subject><rdf:Bag><rdf:li>fruit</rdf:li><rdf:li>hash(0x8123)</rdf:li><rdf:li>red</rdf:li></rdf:Bag></dc:subject>
 </rdf:Description></rdf:RDF></metadata><circle cx="5" cy="5" r="4" fill="red"/></svg>"""


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_clipart_metadata_captions_and_render(tmp_path):
    import cairosvg  # noqa: F401  (the data extra, which dev includes, installs it: a broken install fails here)

    mod = _load("clipart_shards")
    path = tmp_path / "apple.svg"
    path.write_text(SVG)
    title, keywords = mod.metadata(path)
    assert title.startswith("Red_Apple") and keywords == ["fruit", "red"]
    caps = mod.captions(title, "food", keywords)
    assert caps == ["red apple", "clip art of red apple", "food: red apple", "red apple (fruit, red)"]
    img = mod.render(path, 16)
    assert img.shape == (16, 16, 3) and img[8, 8, 0] > 200 and img[8, 8, 1] < 80  # a red disc on white
    (tmp_path / "broken.svg").write_text("<svg")
    assert mod.render(tmp_path / "broken.svg", 16) is None


def test_scripts_explain_missing_packages(monkeypatch, tmp_path):
    for name, attr in [("clipart_shards", "ROOT"), ("emoji_shards", "FONT")]:
        mod = _load(name)
        monkeypatch.setattr(mod, attr, tmp_path / "missing")
        with pytest.raises(SystemExit, match="apt-get install -y"):
            mod.main(["--out", str(tmp_path / name)])
