"""Throughput of one training step (batch 8, 64x64 crops, fp32) for the UNETR and MONAI UNet of recipes/segment.py."""
import sys, time, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from mmfm.registry import build_model
from mmfm.seg import UNETRConfig, build_unetr, build_unet, dice_ce_loss
torch.manual_seed(0)
vit = build_model("vit-mini", img_size=64, patch_size=8, in_chans=1, num_classes=0)
models = {"unetr": build_unetr(UNETRConfig(num_classes=2, feature_size=16), vit), "unet": build_unet(1, 2)}
loss = dice_ce_loss()
x, y = torch.randn(8, 1, 64, 64), torch.randint(0, 2, (8, 1, 64, 64))
for name, m in models.items():
    opt = torch.optim.AdamW(m.parameters())
    for i in range(25):
        if i == 5: t = time.perf_counter()
        l = loss(m(x), y); l.backward(); opt.step(); opt.zero_grad()
    print(name, "s/step", round((time.perf_counter() - t) / 20, 4), "params", sum(p.numel() for p in m.parameters()), flush=True)
