"""Heat-map overlays: the image in grey with the map in a colour scale over it, saved as PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def display_image(image: torch.Tensor, mean=(0.5,), std=(0.5,)) -> np.ndarray:
    """A normalised (C, H, W) tensor back to [0, 1] (H, W) grey or (H, W, 3) colour for display."""
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    x = (image.detach().float().cpu() * s + m).clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()  # (H, W) or (H, W, C)


def save_overlays(images: list[np.ndarray], maps: list[torch.Tensor], titles: list[str], path: str | Path,
                  suptitle: str = "", alpha: float = 0.5) -> Path:
    """One panel per image: the image, and the image with its map (jet, `alpha`) on top; saved to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), squeeze=False)
    for i, (img, m, t) in enumerate(zip(images, maps, titles)):
        kw = dict(cmap="gray", vmin=0, vmax=1) if img.ndim == 2 else {}
        axes[0, i].imshow(img, **kw)
        axes[1, i].imshow(img, **kw)
        axes[1, i].imshow(m.detach().cpu().numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=1)
        axes[0, i].set_title(t, fontsize=7)
        for ax in axes[:, i]:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write (folders made) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def save_explanations(model, images: torch.Tensor, targets: torch.Tensor, names: list[str], stats, out: str | Path,
                      n: int = 8) -> list[Path]:
    """Overlays for `n` of `images` (normalised, as the model takes them), evenly spaced through the split:
    <out>/explain_gradcam.png, and for a ViT also <out>/explain_rollout.png; titles give true and predicted class."""
    from ..models.vit import ViT
    from .maps import explain

    device = next(model.parameters()).device
    pick = torch.linspace(0, len(images) - 1, min(n, len(images))).round().long()
    x, y = images[pick].to(device), targets[pick]
    with torch.no_grad():
        logits = model(x).float().cpu()
    pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
    label = lambda i: names[i] if i < len(names) else str(i)  # noqa: E731
    titles = [f"true {label(int(t))}\npred {label(int(p))}" for t, p in zip(y.view(len(y), -1)[:, 0], pred)]
    shown = [display_image(img, *stats) for img in x]
    paths = []
    for method in ("gradcam", "rollout") if isinstance(model, ViT) else ("gradcam",):
        maps = explain(model, x, method).cpu()
        paths.append(save_overlays(shown, list(maps), titles, Path(out) / f"explain_{method}.png",
                                   f"{method}: where the model looked (test images)"))
    return paths
