"""Config plumbing (YAML, --set, precedence, one error type) and the Table 3 label alignment."""

from __future__ import annotations

import pytest

from avf_data.labels import builtin
from avf_data.settings import ConfigError
from avf_train.cli import build_parser, main
from avf_train.config import from_dict, load_yaml, resolve, save_yaml, stage_defaults, to_dict
from avf_train.errors import DataError
from avf_train.labels import RunLabels, resolve_spec, run_labels


def resolve_config(args):
    """The config the CLI would run with these parsed arguments."""
    from avf_train.cli import _flags

    return resolve(
        args.command,
        config=args.config,
        resume_dir=args.out if args.resume else None,
        flags=_flags(args),
        sets=args.set,
    )


def test_stage_defaults_follow_tables_5_and_6():
    pre, post, fine = (stage_defaults(s) for s in ("pretrain", "postpretrain", "finetune"))
    assert pre.optim.betas == (0.9, 0.95) and pre.optim.base_lr == 1.5e-4 and pre.optim.layer_decay == 1.0
    assert post.optim.base_lr == 1e-3 and fine.optim.base_lr == 5e-4
    assert fine.optim.betas == (0.9, 0.999) and fine.optim.layer_decay == 0.75
    assert fine.finetune.mixup == 0.8 and fine.finetune.label_smoothing == 0.1 and fine.data.repeated_aug == 2
    assert post.data.label_map == "cea13"
    # the values stage_defaults takes from the shipped recipes (Tab. 5 and the official B script)
    assert (pre.run.batch_size, pre.run.epochs, pre.optim.warmup_epochs, pre.data.repeated_aug) == (164, 200, 20, 1)
    for cfg in (post, fine):
        assert (cfg.run.batch_size, cfg.run.epochs, cfg.optim.warmup_epochs, cfg.optim.min_lr) == (32, 100, 5, 1e-6)
        assert cfg.model.drop_path == 0.1 and cfg.data.clip.test_segments == cfg.data.clip.test_crops == 2


def test_yaml_roundtrip_and_dotted_overrides(tmp_path):
    sets = [
        "optim.lr=1e-4",
        "optim.betas=[0.8, 0.9]",
        "data.clip.crop_scales=[1, 0.5]",
        "run.tensorboard=false",
        "model.overrides={depth: 4}",
    ]
    cfg = resolve("finetune", sets=sets)
    save_yaml(cfg, tmp_path / "c.yaml")
    back = load_yaml(tmp_path / "c.yaml")
    assert to_dict(back) == to_dict(cfg)
    assert back.optim.lr == 1e-4 and back.optim.betas == (0.8, 0.9) and back.data.clip.crop_scales == (1.0, 0.5)
    assert back.run.tensorboard is False and back.model.overrides == {"depth": 4}
    with pytest.raises(ConfigError, match="'optim.lrr'"):
        resolve("finetune", sets=["optim.lrr=1"])
    with pytest.raises(ConfigError, match="run.precision"):
        resolve("finetune", sets=["run.precision=fp8"])


@pytest.mark.parametrize("assignment", ["run.tensorboard=1", "data.clip.flip=0", "run.fsdp=maybe"])
def test_booleans_must_be_yaml_booleans(assignment):
    """avf-data's rule: a number or a word is no switch (avf-train used to read "1" as true)."""
    with pytest.raises(ConfigError, match="expects true or false"):
        resolve("pretrain", sets=[assignment])


def test_config_errors_are_one_line_without_stray_quotes(tmp_path, capsys):
    out = str(tmp_path / "run")
    for args, words in (
        (["pretrain", "--out", out, "--set", "optim.lrr=1"], "unknown config key 'optim.lrr'"),
        (["pretrain", "--out", out, "--set", "run.fsdp=1"], "'run.fsdp' expects true or false"),
        (["finetune", "--out", out, "--config", "pretrain_base"], "is for stage 'pretrain'"),
        (["pretrain", "--out", out, "--config", "nope"], "neither a file nor a shipped config"),
        (["postpretrain", "--out", out, "--set", "finetune.task=dea"], "cea and mer only"),
        (["postpretrain", "--out", out, "--task", "dea"], "invalid choice: 'dea'"),
    ):
        capsys.readouterr()
        assert _exit_code(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("avf-train: error: ") and words in lines[0], lines
        assert not lines[0].removeprefix("avf-train: error: ").startswith(('"', "config: "))


def _exit_code(args: list[str]) -> int:
    """main's status, also when argparse itself refuses the command line."""
    try:
        return main(args)
    except SystemExit as exc:
        return int(exc.code)


def test_a_config_file_without_a_stage_applies_to_the_command(tmp_path):
    partial = tmp_path / "partial.yaml"
    partial.write_text("optim: {lr: 0.25}\nrun: {tensorboard: false}\n")
    cfg = resolve("finetune", config=str(partial))
    assert cfg.stage == "finetune" and cfg.optim.lr == 0.25 and cfg.optim.layer_decay == 0.75


def test_cli_precedence_flags_then_set(tmp_path):
    args = build_parser().parse_args(
        [
            "postpretrain",
            "--data",
            "x/*.tar",
            "--out",
            str(tmp_path),
            "--task",
            "mer",
            "--lr",
            "0.1",
            "--set",
            "optim.lr=0.2",
            "--model",
            "tiny",
        ]
    )
    cfg = resolve_config(args)
    assert cfg.stage == "postpretrain" and cfg.data.label_map == "mer3" and cfg.optim.lr == 0.2
    assert cfg.data.shards == "x/*.tar" and cfg.model.name == "tiny"
    # each flag is declared once and reaches its one config key
    from avf_train.cli import FLAGS

    assert len({f.name for f in FLAGS}) == len(FLAGS)


# Paper Table 3: the emotion names each targeted dataset uses.
TABLE3_DATASET_LABELS: dict[str, tuple[str, ...]] = {
    "MAFW": ("Anger", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise", "Contempt", "Anxiety",
             "Helplessness", "Disappointment"),
    "DFEW": ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"),
    "MER-MULTI": ("Worried", "Happy", "Neutral", "Angry", "Surprise", "Sad"),
    "MER24-T&V": ("Worried", "Happy", "Neutral", "Angry", "Surprise", "Sad"),
    "IEMOCAP": ("Anger", "Happy", "Neutral", "Sad"),
    "CREMA-D": ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sadness"),
    "RAVDESS": ("Neutral", "Calm", "Happy", "Sad", "Angry", "Fearful", "Disgust", "Surprised"),
}  # fmt: skip
CEA13 = ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sadness", "Surprise", "Worried", "Calm", "Contempt",
         "Anxiety", "Helplessness", "Disappointment")  # fmt: skip


def test_table3_every_dataset_label_maps_into_the_13_classes():
    cea = resolve_spec("cea13")
    assert cea.remap and cea.space.classes == CEA13
    index = cea.space.resolve
    for dataset, names in TABLE3_DATASET_LABELS.items():
        idx = [index(n) for n in names]
        assert len(set(idx)) == len(names), f"{dataset}: two labels collapsed into one class"
    assert index("Happiness") == index("happy") == index("HAP")
    assert index("Fearful") == CEA13.index("Fear") and index("Clam") == CEA13.index("Calm")
    assert index("Excitement") == index("exc") == CEA13.index("Happy")  # IEMOCAP merge (paper §4.3)
    assert cea.index({"label_name": "Sad"}, "k") == CEA13.index("Sadness")
    mer = resolve_spec("mer3")
    assert mer.space.num_classes == 3 and mer.index({"label_name": "positive"}, "k") == 1
    with pytest.raises(DataError, match="Boredom"):
        cea.index({"label_name": "Boredom"}, "k")
    with pytest.raises(ConfigError, match="neither a built-in label space"):
        resolve_spec("cea14")


def test_label_map_from_yaml(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("classes: [low, high]\naliases: {calm: low, excited: high}\n")
    m = resolve_spec(str(path))
    assert m.index({"label_name": "Excited"}, "k") == 1 and m.index({"label_name": "low"}, "k") == 0
    path.write_text("classes: [low, high]\naliases: {calm: medium}\n")
    with pytest.raises(ConfigError, match="'calm' -> 'medium' names no class"):
        resolve_spec(str(path))


def test_the_resolved_label_map_is_one_field_that_survives_a_config_round_trip():
    """Pre-flight writes the full map into data.label_map; checkpoints and resumes read it back."""
    cfg = stage_defaults("finetune")
    cfg.data.label_map = RunLabels(builtin("iemocap"), remap=False).to_config()
    again = from_dict(to_dict(cfg), "finetune")
    labels = run_labels(again)
    assert labels == run_labels(cfg) and not labels.remap
    assert labels.space.classes == ("anger", "happiness", "neutral", "sadness") and labels.space.protocol == "iemocap"
    assert labels.space.resolve("exc") == 1  # aliases and merges travel with it
    with pytest.raises(ConfigError, match="unknown config key 'data.classes'"):
        from_dict({"data": {"classes": ["a", "b"]}}, "finetune")


def test_shipped_configs_load_for_their_stage(tmp_path):
    for name, stage in (
        ("pretrain_base", "pretrain"),
        ("pretrain_large", "pretrain"),
        ("pretrain_huge", "pretrain"),
        ("postpretrain_cea", "postpretrain"),
        ("finetune_cea", "finetune"),
    ):
        args = build_parser().parse_args([stage, "--config", name, "--out", str(tmp_path)])
        cfg = resolve_config(args)
        assert cfg.stage == stage
    huge = resolve_config(build_parser().parse_args(["pretrain", "--config", "pretrain_huge"]))
    assert huge.optim.clip_grad == 0.7 and huge.run.fsdp and huge.model.name == "avfmae_pp_huge"
