"""Regression tests for round six's GAN that ignored its digit labels (docs/generative.md, round eight): the
projection discriminator's class embedding, spectral-normed from nn.Embedding's N(0, 1) init, turned ~20x
slower under Adam than the linear head beside it (0.4 % after 50 steps on the real data), so D's projection
stayed at chance on real digits and nothing pushed the generator to tell the digits apart. Fixed by
initialising the embedding at the linear head's scale and by an auxiliary classifier term (AC-GAN)."""
import pytest
import torch

import mmfm
from mmfm.models.gan import Discriminator
from mmfm.train.adversarial import hinge_d_loss
from mmfm.train.gan import GANTask


def _turn(before: torch.Tensor, after: torch.Tensor) -> float:
    return ((after - before).norm() / before.norm()).item()


def test_projection_embedding_trains_at_the_linear_heads_rate():
    """Spectral norm divides out a weight's scale, so Adam's ~lr-sized steps on the raw entries turn the
    normalised weight by lr / rms(raw): with N(0, 1) raw entries the embedding turned 0.17x as fast as the
    linear head at these shapes (0.05x at gan-mini's); at the head's init scale, about 1x."""
    torch.manual_seed(0)
    d = Discriminator(mmfm.get_config("gan-test", num_classes=2))
    opt = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.9))
    embed, linear = d.embed.weight.detach().clone(), d.linear.weight.detach().clone()
    x, y = torch.randn(16, 1, 16, 16), torch.arange(16) % 2
    for _ in range(10):
        loss = hinge_d_loss(d(x, y), d(torch.randn(16, 1, 16, 16), y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        ratio = _turn(embed, d.embed.weight) / _turn(linear, d.linear.weight)
    assert 0.5 < ratio < 2.0, ratio


def test_discriminator_heads_read_the_label_and_share_features():
    torch.manual_seed(0)
    d = Discriminator(mmfm.get_config("gan-test")).eval()  # eval: no power iteration between the calls
    x = torch.randn(3, 1, 16, 16)
    h = d.features(x)
    assert h.shape == (3, 16) and d.classify(h).shape == (3, 4)
    torch.testing.assert_close(d(x, torch.tensor([0, 1, 2])), d.head(h, torch.tensor([0, 1, 2])))
    assert (d(x, torch.tensor([0, 0, 0])) - d(x, torch.tensor([3, 3, 3]))).abs().min() > 1e-4  # every sample
    g = mmfm.build_model("gan-test")
    task = GANTask(g, d)
    real, labels = torch.rand(4, 1, 16, 16) * 2 - 1, torch.arange(4)
    hinge, aux = task.discriminator_losses(real, labels)
    assert aux > 0 and task.aux_weight == 1.0
    assert GANTask(g, d, aux_weight=0.0).generator_losses(labels)[1] == 0
    with pytest.raises(ValueError, match="aux_weight=-1"):
        GANTask(g, d, aux_weight=-1)
