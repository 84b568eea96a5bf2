"""diffusers DiTTransformer2DModel <-> mmfm DiT: equal outputs both ways at tiny random configs (no downloads)."""
import pytest
import torch

import mmfm
from mmfm.interop import from_diffusers_dit, to_diffusers_dit

import diffusers


def _randomise(model, seed=0):
    """Non-trivial weights everywhere (the adaLN-Zero init would make every block the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def _inputs(in_ch, size, n_classes, batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_ch, size, size, generator=g)
    t = torch.tensor([0.0, 412.5, 999.0][:batch])
    y = torch.tensor([0, n_classes, n_classes - 1][:batch])  # includes the null label
    return x, t, y


# (in_channels, input_size, patch, heads, head_dim, depth, classes, learn_sigma): the last is the DiT-XL/2 layout
CONFIGS = [(1, 16, 4, 2, 16, 2, 10, False), (4, 8, 2, 2, 8, 3, 7, True)]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_from_diffusers_equal_outputs(cfg):
    in_ch, size, patch, heads, hd, depth, n_cls, sigma = cfg
    dm = diffusers.DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=hd, in_channels=in_ch,
                                         out_channels=2 * in_ch if sigma else in_ch, num_layers=depth,
                                         sample_size=size, patch_size=patch, num_embeds_ada_norm=n_cls, norm_eps=1e-6)
    _randomise(dm)
    emb0 = dm.transformer_blocks[0].norm1.emb.state_dict()
    for block in dm.transformer_blocks[1:]:  # a paper checkpoint: the per-block embedders are copies
        block.norm1.emb.load_state_dict(emb0)
    ours = from_diffusers_dit(dm).eval()
    assert ours.config.learn_sigma == sigma and ours.config.timestep_freq_shift == 1
    x, t, y = _inputs(in_ch, size, n_cls)
    with torch.no_grad():
        ref = dm(x, timestep=t, class_labels=y).sample
        torch.testing.assert_close(ours(x, t, y), ref, atol=1e-4, rtol=1e-4)
        back = to_diffusers_dit(ours).eval()
        torch.testing.assert_close(back(x, timestep=t, class_labels=y).sample, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shift", [0, 1])
def test_to_diffusers_equal_outputs_and_saved_folder(shift, tmp_path, caplog):
    ours = _randomise(mmfm.build_model("dit-test", learn_sigma=True, timestep_freq_shift=shift), seed=2)
    with caplog.at_level("WARNING"):
        dm = to_diffusers_dit(ours).eval()
    assert ("save_pretrained folder would reload" in caplog.text) == (shift == 0)
    x, t, y = _inputs(1, 16, 10)
    with torch.no_grad():
        ref = ours(x, t, y)
        torch.testing.assert_close(dm(x, timestep=t, class_labels=y).sample, ref, atol=1e-4, rtol=1e-4)
    if shift == 1:  # a saved diffusers folder reloads to the same function
        dm.save_pretrained(tmp_path / "dm")
        again = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / "dm").eval()
        with torch.no_grad():
            torch.testing.assert_close(again(x, timestep=t, class_labels=y).sample, ref, atol=1e-4, rtol=1e-4)


def test_refusals():
    dm = _randomise(diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1,
                                                    out_channels=1, num_layers=2, sample_size=8, patch_size=4,
                                                    num_embeds_ada_norm=3))
    with pytest.raises(ValueError, match="transformer_blocks.1.norm1.emb.* differs from block 0's"):
        from_diffusers_dit(dm)  # independently initialised per-block embedders: no shared-embedder equivalent
    with pytest.raises(ValueError, match="class labels only"):
        to_diffusers_dit(mmfm.build_model("dit-test", num_classes=0, text_dim=8))
    with pytest.raises(ValueError, match="num_classes=0"):
        to_diffusers_dit(mmfm.build_model("dit-test", num_classes=0))
    with pytest.raises(ValueError, match="mlp_ratio=2.0"):
        to_diffusers_dit(mmfm.build_model("dit-test", mlp_ratio=2.0))
    with pytest.raises(ValueError, match="only diffusers DiTTransformer2DModel"):
        from_diffusers_dit(torch.nn.Linear(2, 2))
