"""recipes/label_efficiency.py: the table and plot from grid rows, and skipping missing backbones."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    if "label_efficiency_recipe" not in sys.modules:
        spec = importlib.util.spec_from_file_location("label_efficiency_recipe", ROOT / "recipes" / "label_efficiency.py")
        sys.modules["label_efficiency_recipe"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["label_efficiency_recipe"])
    return sys.modules["label_efficiency_recipe"]


def _rows():
    rows = []
    for b, base in (("scratch", 0.3), ("vit", 0.5)):
        for f, n in ((0.01, 10), (1.0, 1000)):
            rows.append({"data": "brain", "backbone": b, "method": "full", "label_fraction": f, "n_train": n, "seed": 0,
                         "test/balanced_accuracy": base + f / 10, "test/auroc": 0.8})
    return rows


def test_table_and_plot(tmp_path):
    m = _module()
    md = m.table(_rows(), "brain").splitlines()
    assert md[0] == "| brain: backbone | method | 1% labels (n=10) | 100% labels (n=1000) |"
    assert md[2] == "| scratch | full | 0.301 (0.800) | 0.400 (0.800) |"
    assert md[3] == "| vit | full | 0.501 (0.800) | 0.600 (0.800) |"
    m.plot(_rows(), "brain", tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 5000
    second = [{**r, "seed": 1, "test/balanced_accuracy": r["test/balanced_accuracy"] + 0.1} for r in _rows()]
    md = m.table(_rows() + second, "brain").splitlines()  # two seeds: mean ± sample std
    assert md[2] == "| scratch | full | 0.351 ± 0.071 (0.800) | 0.450 ± 0.071 (0.800) |"
    m.plot(_rows() + second, "brain", tmp_path / "p2.png")


def test_missing_backbone_folder_is_skipped(tmp_path):
    m = _module()
    found = m.available({"a": "vit-test", "b": str(tmp_path / "nothing"), "c": str(tmp_path)})
    assert found == {"a": "vit-test"}
