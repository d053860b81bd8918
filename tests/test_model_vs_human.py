"""The model-vs-human dataset reader, on fixture trees in the benchmark's on-disk layout."""
import numpy as np
import pytest
import torch
from PIL import Image

from prunelens.alignment import read_human_trials
from prunelens.data import model_vs_human as mvh
from prunelens.errors import DataError


def _png(path, seed=0, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _dnn_name(human_imagename):
    """The DNN copy of a human trial's image: same fields, subject 'dnn' (…_s01_… → …_dnn_…)."""
    fields = human_imagename.split("_")
    fields[2] = "dnn"
    return "_".join(fields)


def test_image_id_and_texture_follow_the_benchmark_examples():
    assert mvh.image_id("0000_cl_s01_bw_boat_40_n02951358_5952.JPEG") == "n02951358_5952.JPEG"
    assert mvh.image_id("airplane1-bicycle2.png") == "airplane1-bicycle2.png"
    assert mvh.image_id("0001_edg_s01_0_oven_00_oven10.png") == "oven10.png"
    assert mvh.texture_category("0002_s5n_s01_0_bird_00_bird2-clock3.png") == "clock"
    assert mvh.texture_category("airplane1-bicycle2.png") == "bicycle"


def test_canonical_condition_spells_conditions_as_the_benchmark():
    assert mvh.canonical_condition("high-pass", "1") == "1.0"
    assert mvh.canonical_condition("high-pass", "inf") == "inf"
    assert mvh.canonical_condition("uniform-noise", "0.90") == "0.9"
    assert mvh.canonical_condition("uniform-noise", "0.00") == "0.0"
    assert mvh.canonical_condition("false-colour", "true") == "True"
    assert mvh.canonical_condition("synthetic-false-colour", "false") == "False"
    assert mvh.canonical_condition("contrast", "c05") == "c05"
    assert mvh.canonical_condition("sketch", "0") == "0"
    assert mvh.canonical_condition("contrast", "c42") == "c42"  # unknown: unchanged
    assert mvh.benchmark_dataset("synthetic-cue-conflict") == "cue-conflict"
    assert mvh.benchmark_dataset("my-data") == "my-data"


def test_session_layout_gives_the_conditions_and_categories_of_the_human_trials(tmp_path):
    humans = read_human_trials("high-pass")
    sample = humans[humans["subj"] == "subject-01"].iloc[::40]  # 32 images, every condition
    for k, name in enumerate(sample["imagename"]):
        _png(tmp_path / "high-pass" / "dnn" / "session-1" / _dnn_name(name), seed=k)
    stimuli = mvh.list_stimuli(tmp_path, "high-pass")
    assert len(stimuli) == len(sample)
    got = {mvh.image_id(s.imagename): (s.condition, s.category, s.session) for s in stimuli}
    for _, row in sample.iterrows():
        assert got[row["image_id"]] == (row["condition"], row["category"], 1)
    assert {s.condition for s in stimuli} >= {"1.0", "3.0", "inf"}


def test_category_layout_and_cue_conflict_textures(tmp_path):
    _png(tmp_path / "edge" / "oven" / "oven10.png")
    _png(tmp_path / "edge" / "cat" / "cat3.png")
    _png(tmp_path / "cue-conflict" / "airplane" / "airplane1-bicycle2.png")
    edge = mvh.list_stimuli(tmp_path, "edge")
    assert [(s.imagename, s.category, s.condition) for s in edge] == [
        ("cat3.png", "cat", "0"), ("oven10.png", "oven", "0")]
    (cue,) = mvh.list_stimuli(tmp_path, "cue-conflict")
    assert (cue.category, mvh.texture_category(cue.imagename)) == ("airplane", "bicycle")


def test_dataset_loads_exact_pixels(tmp_path):
    pixels = _png(tmp_path / "silhouette" / "bear" / "bear1.png", seed=3, size=5)
    ds = mvh.ModelVsHumanDataset(tmp_path, "silhouette")
    image, index = ds[0]
    assert index == 0 and image.shape == (3, 5, 5) and image.dtype == torch.float32
    torch.testing.assert_close(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)


def test_find_datasets_skips_missing_ones_with_a_note(tmp_path):
    _png(tmp_path / "edge" / "oven" / "oven1.png")
    _png(tmp_path / "colour" / "dnn" / "session-1" / "0001_cl_dnn_cr_oven_40_n04111531_1.png")
    present, notes = mvh.find_datasets(tmp_path)
    assert present == ["colour", "edge"]
    assert len(notes) == 15 and any("'sketch' not found" in n for n in notes)
    present, notes = mvh.find_datasets(tmp_path, ["edge", "rotation"])
    assert present == ["edge"] and len(notes) == 1 and "rotation" in notes[0]
    with pytest.raises(DataError, match="unknown model-vs-human dataset"):
        mvh.find_datasets(tmp_path, ["imagenet-c"])
    with pytest.raises(DataError, match="not a folder"):
        mvh.find_datasets(tmp_path / "nowhere")


def test_malformed_names_and_layouts_are_clear_errors(tmp_path):
    bad = tmp_path / "contrast" / "dnn" / "session-1" / "0001_cop_c30.png"
    _png(bad)
    with pytest.raises(DataError, match="0001_cop_c30.png"):
        mvh.list_stimuli(tmp_path, "contrast")
    _png(tmp_path / "rotation" / "dnn" / "session-1" / "0001_rot_dnn_90_zebra_20_n0_1.png")
    with pytest.raises(DataError, match="'zebra' is not one of the 16"):
        mvh.list_stimuli(tmp_path, "rotation")
    _png(tmp_path / "low-pass" / "0001_lp_dnn_3_cat_10_n02124075_1.png")  # no dnn/session-1
    with pytest.raises(DataError, match="session-"):
        mvh.list_stimuli(tmp_path, "low-pass")
    _png(tmp_path / "edge" / "zebra" / "zebra1.png")
    with pytest.raises(DataError, match="zebra"):
        mvh.list_stimuli(tmp_path, "edge")
    (tmp_path / "silhouette").mkdir()
    with pytest.raises(DataError, match="no images"):
        mvh.list_stimuli(tmp_path, "silhouette")
    broken = tmp_path / "sketch" / "dnn" / "session-1" / "0001_ske_dnn_0_cat_00_x.png"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        mvh.ModelVsHumanDataset(tmp_path, "sketch")[0]


def test_tables_cover_the_17_datasets():
    assert len(mvh.DATASETS) == 17 and len(mvh.CATEGORIES) == 16
    for name, (conds, excluded) in mvh.CONDITIONS.items():
        assert set(excluded) <= set(conds), name
        assert len(excluded) < len(conds) or not conds, name
