"""Config loading (pcdet.config): base inheritance, merge rules, --set overrides, logging."""

import logging
from pathlib import Path

import pytest
import yaml
from easydict import EasyDict

from pcdet.config import ConfigError, cfg, cfg_from_list, cfg_from_yaml_file, log_config_to_file, merge_new_config

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_global_cfg_knows_repo_root():
    assert cfg.ROOT_DIR == REPO
    assert cfg.LOCAL_RANK == 0


def test_sub_dict_base_is_overridden_key_by_key_and_lists_are_replaced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(
        tmp_path / "cfgs/data.yaml",
        {"RANGE": [0, 1, 2, 3, 4, 5], "AUG": {"A": 1, "B": {"X": 1, "Y": 2}}, "NAME": "base"},
    )
    child = _write(
        tmp_path / "cfgs/model.yaml",
        {"DATA_CONFIG": {"_BASE_CONFIG_": "cfgs/data.yaml", "RANGE": [9], "AUG": {"B": {"Y": 20}}}, "OTHER": 3},
    )
    out = cfg_from_yaml_file(child, EasyDict())
    data = out.DATA_CONFIG
    assert data.RANGE == [9]  # replaced, not merged element-wise
    assert data.AUG.A == 1 and data.AUG.B.X == 1 and data.AUG.B.Y == 20  # recursive dict merge
    assert data.NAME == "base"
    assert data._BASE_CONFIG_ == "cfgs/data.yaml"  # kept, as OpenPCDet keeps it
    assert out.OTHER == 3
    assert isinstance(data.AUG.B, EasyDict)


def test_top_level_and_recursive_bases(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "cfgs/data.yaml", {"VOXEL": [0.16, 0.16, 4], "SPLIT": "train"})
    _write(
        tmp_path / "cfgs/teacher.yaml",
        {"DATA_CONFIG": {"_BASE_CONFIG_": "cfgs/data.yaml", "SPLIT": "val"}, "MODEL": {"NAME": "PP", "WIDTH": 64}},
    )
    _write(tmp_path / "cfgs/student.yaml", {"_BASE_CONFIG_": "cfgs/teacher.yaml", "MODEL": {"WIDTH": 32}})
    kd = _write(tmp_path / "cfgs/kd.yaml", {"_BASE_CONFIG_": "cfgs/student.yaml", "KD": {"K": 128}})
    out = cfg_from_yaml_file(kd, EasyDict())
    assert out.MODEL == {"NAME": "PP", "WIDTH": 32}
    assert out.DATA_CONFIG.VOXEL == [0.16, 0.16, 4] and out.DATA_CONFIG.SPLIT == "val"
    assert out.KD.K == 128


def test_base_path_falls_back_to_repo_tools_dir(tmp_path, monkeypatch):
    """From a directory where the relative base does not exist, it is found under ROOT_DIR/tools."""
    monkeypatch.chdir(tmp_path)
    child = _write(
        tmp_path / "child.yaml",
        {"DATA_CONFIG": {"_BASE_CONFIG_": "cfgs/dataset_configs/kitti_dataset.yaml", "FOV_POINTS_ONLY": False}},
    )
    out = cfg_from_yaml_file(child, EasyDict())
    assert out.DATA_CONFIG.DATASET == "KittiDataset"
    assert out.DATA_CONFIG.FOV_POINTS_ONLY is False
    assert out.DATA_CONFIG.POINT_CLOUD_RANGE == [0, -40, -3, 70.4, 40, 1]


def test_missing_base_names_path_and_referrer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    child = _write(tmp_path / "child.yaml", {"DATA_CONFIG": {"_BASE_CONFIG_": "cfgs/nope.yaml"}})
    with pytest.raises(ConfigError, match=r"cfgs/nope\.yaml.*child\.yaml"):
        cfg_from_yaml_file(child, EasyDict())


def test_cyclic_bases_are_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "a.yaml", {"_BASE_CONFIG_": "b.yaml", "X": 1})
    _write(tmp_path / "b.yaml", {"_BASE_CONFIG_": "a.yaml", "Y": 1})
    with pytest.raises(ConfigError, match="cyclic"):
        cfg_from_yaml_file(tmp_path / "a.yaml", EasyDict())


def test_merge_new_config_into_existing(tmp_path):
    config = EasyDict({"A": {"B": 1, "C": [1, 2]}, "D": 1})
    merge_new_config(config, {"A": {"C": [3]}, "E": {"F": 2}})
    assert config == {"A": {"B": 1, "C": [3]}, "D": 1, "E": {"F": 2}}
    assert isinstance(config.E, EasyDict)


@pytest.fixture
def loaded():
    return cfg_from_yaml_file(REPO / "tools/cfgs/dataset_configs/kitti_dataset.yaml", EasyDict())


def test_set_parses_values_with_literal_eval(loaded):
    cfg_from_list(
        [
            "POINT_CLOUD_RANGE", "[0, -40, -3, 70.4, 40, 1]",
            "FOV_POINTS_ONLY", "False",
            "DATA_SPLIT.test", "test",
            "DATA_PROCESSOR", "[]",
        ],
        loaded,
    )  # fmt: skip
    assert loaded.POINT_CLOUD_RANGE == [0, -40, -3, 70.4, 40, 1]
    assert loaded.FOV_POINTS_ONLY is False
    assert loaded.DATA_SPLIT.test == "test"


def test_set_list_forms_and_element_types(loaded):
    aug = loaded.DATA_AUGMENTOR
    cfg_from_list(["DATA_AUGMENTOR.DISABLE_AUG_LIST", "gt_sampling,random_world_flip"], loaded)
    assert aug.DISABLE_AUG_LIST == ["gt_sampling", "random_world_flip"]
    cfg_from_list(["DATA_AUGMENTOR.DISABLE_AUG_LIST", "[gt_sampling]"], loaded)
    assert aug.DISABLE_AUG_LIST == ["gt_sampling"]
    cfg_from_list(["POINT_CLOUD_RANGE", "1,2,3,4,5,6.5"], loaded)
    assert loaded.POINT_CLOUD_RANGE == [1, 2, 3, 4, 5, 6.5]
    # float list: int elements are widened to float
    loaded.SCALE = [0.95, 1.05]
    cfg_from_list(["SCALE", "[1, 2]"], loaded)
    assert loaded.SCALE == [1.0, 2.0] and all(isinstance(x, float) for x in loaded.SCALE)
    with pytest.raises(ConfigError, match=r"SCALE.*element 1"):
        cfg_from_list(["SCALE", "[1.0, abc]"], loaded)


def test_set_int_to_float_allowed_other_type_changes_refused(loaded):
    loaded.LR = 0.003
    loaded.EPOCHS = 80
    cfg_from_list(["LR", "1"], loaded)
    assert loaded.LR == 1.0 and isinstance(loaded.LR, float)
    with pytest.raises(ConfigError, match=r"EPOCHS.*float"):
        cfg_from_list(["EPOCHS", "1.5"], loaded)
    with pytest.raises(ConfigError, match="FOV_POINTS_ONLY"):
        cfg_from_list(["FOV_POINTS_ONLY", "1"], loaded)
    with pytest.raises(ConfigError, match="EPOCHS"):
        cfg_from_list(["EPOCHS", "True"], loaded)
    with pytest.raises(ConfigError, match="POINT_CLOUD_RANGE"):
        cfg_from_list(["POINT_CLOUD_RANGE", "abc"], loaded)
    # a string option given text that parses as a number keeps the text
    cfg_from_list(["DATA_SPLIT.train", "007"], loaded)
    assert loaded.DATA_SPLIT.train == "007"


def test_set_dict_option_in_key_value_form(loaded):
    cfg_from_list(["DATA_SPLIT", "train:trainval,test:test"], loaded)
    assert loaded.DATA_SPLIT == {"train": "trainval", "test": "test"}
    with pytest.raises(ConfigError, match=r"DATA_SPLIT\.tset.*DATA_SPLIT\.test"):
        cfg_from_list(["DATA_SPLIT", "tset:val"], loaded)


def test_set_unknown_key_names_full_key_and_suggests(loaded):
    with pytest.raises(ConfigError, match=r"'DATA_AUGMENTOR\.DISABLE_AUG_LST'.*DATA_AUGMENTOR\.DISABLE_AUG_LIST"):
        cfg_from_list(["DATA_AUGMENTOR.DISABLE_AUG_LST", "[]"], loaded)
    with pytest.raises(KeyError, match="POINT_CLOUD_RANGE"):  # ConfigError is a KeyError too
        cfg_from_list(["POINT_CLOUD_RANG", "[1]"], loaded)
    with pytest.raises(ConfigError, match="NOT_THERE"):
        cfg_from_list(["NOT_THERE.X", "1"], loaded)
    with pytest.raises(ConfigError, match="pairs"):
        cfg_from_list(["FOV_POINTS_ONLY"], loaded)


def test_log_config_to_file_writes_every_leaf(loaded, caplog):
    logger = logging.getLogger("test_config_log")
    with caplog.at_level(logging.INFO, logger="test_config_log"):
        log_config_to_file(loaded, pre="cfg", logger=logger)
    text = caplog.text
    assert "cfg.DATA_PATH: ../data/kitti" in text
    assert "cfg.DATA_SPLIT.train: train" in text
    assert "----------- POINT_FEATURE_ENCODING -----------" in text
