"""Model folders: bad weights files fail with a sentence naming the file, NaN weights warn, and a save is whole
(swapped in), keeps what other code wrote into the folder, and honours the umask."""
import logging
import os
import pickle
import stat

import pytest
import torch

import mmfm
from mmfm.checkpoint import WEIGHTS, save_pretrained


@pytest.fixture
def gpt_folder(tmp_path):
    return mmfm.build_model("gpt-test").save_pretrained(tmp_path / "gpt")


def test_truncated_weights_name_the_file(gpt_folder):
    f = gpt_folder / WEIGHTS
    data = f.read_bytes()
    for cut in (len(data) // 2, 100, 4):
        f.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"{f}.* truncated"):
            mmfm.build_model(gpt_folder)


def test_pickle_renamed_to_safetensors_is_named_and_never_unpickled(gpt_folder, tmp_path):
    flag = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self):
            return (open, (str(flag), "w"))

    (gpt_folder / WEIGHTS).write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ValueError, match=r"model.safetensors is a Python pickle.*not loaded"):
        mmfm.build_model(gpt_folder)
    torch.save({"w": torch.zeros(2)}, gpt_folder / WEIGHTS)
    with pytest.raises(ValueError, match=r"zip archive \(a torch.save checkpoint\)"):
        mmfm.build_model(gpt_folder)
    assert not flag.exists()


def test_other_familys_weights_say_so(tmp_path, gpt_folder):
    vit = mmfm.build_model("vit-test").save_pretrained(tmp_path / "vit")
    os.replace(gpt_folder / WEIGHTS, vit / WEIGHTS)
    with pytest.raises(ValueError, match="config.json says vit; the weights in .* look like a gpt") as e:
        mmfm.build_model(vit)
    assert str(e.value).count("\n") == 0


def test_same_family_mismatch_is_summarised(tmp_path, gpt_folder):
    mmfm.build_model("gpt-test", n_layer=3).save_pretrained(tmp_path / "deeper")
    os.replace(gpt_folder / WEIGHTS, tmp_path / "deeper" / WEIGHTS)
    with pytest.raises(ValueError, match=r"do not match its config.json \(gpt\): \d+ missing \(e.g. transformer.blocks.2"):
        mmfm.build_model(tmp_path / "deeper")


def test_non_finite_weights_load_with_a_warning(tmp_path, caplog):
    model = mmfm.build_model("gpt-test")
    with torch.no_grad():
        model.wte.weight[0, 0] = float("nan")
        model.transformer.blocks[1].mlp.fc1.bias[3] = float("inf")
    model.save_pretrained(tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="mmfm.checkpoint"):
        back = mmfm.build_model(tmp_path / "m")
    assert torch.isnan(back.wte.weight[0, 0])
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "2 tensor(s) hold NaN or infinite values" in msg
    assert "wte.weight" in msg and "transformer.blocks.1.mlp.fc1.bias" in msg


def test_saved_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = mmfm.build_model("gpt-test").save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    for name in ("config.json", WEIGHTS):
        assert stat.S_IMODE((path / name).stat().st_mode) == 0o644, name


def test_atomic_write_text_honours_the_umask(tmp_path):
    from mmfm.checkpoint import atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640


def test_save_keeps_what_other_code_wrote(tmp_path):
    path = tmp_path / "m"
    mmfm.build_model("dit-test").save_pretrained(path)
    (path / "diffusion.json").write_text('{"class_names": []}')
    (path / "scheduler").mkdir()
    (path / "scheduler" / "scheduler_config.json").write_text("{}")
    model = mmfm.build_model("dit-test", depth=3)
    model.save_pretrained(path)
    assert (path / "diffusion.json").read_text() == '{"class_names": []}'
    assert (path / "scheduler" / "scheduler_config.json").is_file()
    assert mmfm.build_model(path).config.depth == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left behind


def test_a_failed_save_leaves_the_old_folder_whole(tmp_path, monkeypatch):
    path = mmfm.build_model("gpt-test").save_pretrained(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("mmfm.checkpoint.save_model", fail)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(mmfm.build_model("gpt-test", n_layer=3), path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_headed_model_round_trip(tmp_path):
    from mmfm.align.heads import RewardModel

    rm = RewardModel(mmfm.build_model("gpt-test"))
    rm.save_pretrained(tmp_path / "rm")
    rm.save_pretrained(tmp_path / "rm")  # a second save over the first keeps head files consistent
    back = RewardModel.from_pretrained(tmp_path / "rm")
    for a, b in zip(rm.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)


def test_a_save_interrupted_mid_swap_points_to_the_previous_folder(tmp_path, monkeypatch):
    path = mmfm.build_model("gpt-test").save_pretrained(tmp_path / "m")
    real_rename = os.rename

    def crash_on_second(src, dst):
        real_rename(src, dst)
        if str(dst).startswith(str(tmp_path / ".m.old-")):
            raise KeyboardInterrupt  # killed between the two renames

    monkeypatch.setattr("mmfm.checkpoint.os.rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(mmfm.build_model("gpt-test", n_layer=3), path)
    monkeypatch.undo()
    with pytest.raises(mmfm.config.ConfigError, match=r"interrupted save left the previous folder at .*\.m\.old-"):
        mmfm.build_model(path)
