"""Config plumbing (YAML, --set, precedence) and the Table 3 label alignment."""

from __future__ import annotations

import pytest

from avf_train.cli import build_parser, resolve_config
from avf_train.config import load_yaml, save_yaml, set_dotted, stage_defaults, to_dict
from avf_train.labels import CEA13_CLASSES, TABLE3_DATASET_LABELS, get_label_map


def test_stage_defaults_follow_tables_5_and_6():
    pre, post, fine = (stage_defaults(s) for s in ("pretrain", "postpretrain", "finetune"))
    assert pre.optim.betas == (0.9, 0.95) and pre.optim.base_lr == 1.5e-4 and pre.optim.layer_decay == 1.0
    assert post.optim.base_lr == 1e-3 and fine.optim.base_lr == 5e-4
    assert fine.optim.betas == (0.9, 0.999) and fine.optim.layer_decay == 0.75
    assert fine.finetune.mixup == 0.8 and fine.finetune.label_smoothing == 0.1 and fine.data.repeated_aug == 2
    assert post.data.label_map == "cea13"


def test_yaml_roundtrip_and_dotted_overrides(tmp_path):
    cfg = stage_defaults("finetune")
    set_dotted(cfg, "optim.lr=1e-4")
    set_dotted(cfg, "optim.betas=[0.8, 0.9]")
    set_dotted(cfg, "data.crop_scales=1,0.5")
    set_dotted(cfg, "run.tensorboard=false")
    set_dotted(cfg, "model.overrides={depth: 4}")
    save_yaml(cfg, tmp_path / "c.yaml")
    back = load_yaml(tmp_path / "c.yaml")
    assert to_dict(back) == to_dict(cfg)
    assert back.optim.lr == 1e-4 and back.optim.betas == (0.8, 0.9) and back.data.crop_scales == (1.0, 0.5)
    assert back.run.tensorboard is False and back.model.overrides == {"depth": 4}
    with pytest.raises(KeyError, match="optim.lrr"):
        set_dotted(cfg, "optim.lrr=1")
    with pytest.raises(ValueError, match="run.precision"):
        set_dotted(cfg, "run.precision=fp8")


def test_cli_precedence_flags_then_set(tmp_path):
    args = build_parser().parse_args(
        ["postpretrain", "--data", "x/*.tar", "--out", str(tmp_path), "--task", "mer", "--lr", "0.1",
         "--set", "optim.lr=0.2", "--model", "tiny"])
    cfg = resolve_config(args)
    assert cfg.stage == "postpretrain" and cfg.data.label_map == "mer3" and cfg.optim.lr == 0.2
    assert cfg.data.shards == "x/*.tar" and cfg.model.name == "tiny"


def test_table3_every_dataset_label_maps_into_the_13_classes():
    cea = get_label_map("cea13")
    assert cea.num_classes == 13 and len(set(CEA13_CLASSES)) == 13
    for dataset, names in TABLE3_DATASET_LABELS.items():
        idx = [cea.index({"label_name": n}) for n in names]
        assert len(set(idx)) == len(names), f"{dataset}: two labels collapsed into one class"
    assert cea.index({"label_name": "Happiness"}) == cea.index({"label_name": "happy"})
    assert cea.index({"label_name": "Fearful"}) == CEA13_CLASSES.index("Fear")
    assert cea.index({"label_name": "Excitement"}) == CEA13_CLASSES.index("Happy")  # IEMOCAP merge
    mer = get_label_map("mer3")
    assert mer.num_classes == 3 and mer.index({"label_name": "positive"}) == 1
    with pytest.raises(KeyError, match="Boredom"):
        cea.index({"label_name": "Boredom"})
    assert get_label_map("") is None


def test_label_map_from_yaml(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("classes: [low, high]\naliases: {calm: low, excited: high}\n")
    m = get_label_map(str(path))
    assert m.index({"label_name": "Excited"}) == 1 and m.index({"label_name": "low"}) == 0


def test_shipped_configs_load_for_their_stage(tmp_path):
    for name, stage in (("pretrain_base", "pretrain"), ("pretrain_large", "pretrain"),
                        ("pretrain_huge", "pretrain"), ("postpretrain_cea", "postpretrain"),
                        ("finetune_cea", "finetune")):
        args = build_parser().parse_args([stage, "--config", name, "--out", str(tmp_path)])
        cfg = resolve_config(args)
        assert cfg.stage == stage
    huge = resolve_config(build_parser().parse_args(["pretrain", "--config", "pretrain_huge"]))
    assert huge.optim.clip_grad == 0.7 and huge.run.fsdp and huge.model.name == "avfmae_pp_huge"
