"""Parameter counts and state-dict names/shapes must equal the official models exactly."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from avfm_helpers import OFFICIAL, official_keys, param_counts

from avf_models import count_parameters, create_model
from avf_models.convert import ours_to_official_key

REF = {
    ("avfmae_pp_base", "pretrain"): ("AVF-MAE++_B_pretrain", 187_942_660),
    ("avfmae_pp_large", "pretrain"): ("AVF-MAE++_L_pretrain", 336_322_308),
    ("avfmae_pp_huge", "pretrain"): ("AVF-MAE++_H_pretrain", 572_665_092),
    ("avfmae_pp_base", "finetune"): ("AVF-MAE++_B_finetune_nc11", 169_122_851),
    ("avfmae_pp_large", "finetune"): ("AVF-MAE++_L_finetune_nc11", 303_233_319),
    ("avfmae_pp_huge", "finetune"): ("AVF-MAE++_H_finetune_nc11", 521_309_229),
    ("hicmae_base", "pretrain"): ("HiCMAE-B_pretrain", 99_609_344),
}


def _meta(name: str, stage: str, **kw):
    with torch.device("meta"):
        return create_model(name, stage, **kw)


@pytest.mark.parametrize(("name", "stage"), list(REF))
def test_parameter_count_equals_official(name: str, stage: str) -> None:
    key, total = REF[(name, stage)]
    ref = param_counts()[key]
    assert ref["total"] == total
    model = _meta(name, stage, num_classes=11)
    assert count_parameters(model) == total
    by = Counter()
    for n, p in model.named_parameters():
        by[n.split(".")[0]] += p.numel()
    assert dict(by) == ref["by_top_module"]


@pytest.mark.parametrize(("stem", "name", "stage"), OFFICIAL)
def test_state_dict_names_and_shapes_equal_official(stem: str, name: str, stage: str) -> None:
    model = _meta(name, stage, num_classes=11)
    ours = {
        ours_to_official_key(k) if name != "hicmae_base" else k: tuple(v.shape) for k, v in model.state_dict().items()
    }
    official = dict(official_keys(stem))
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert {k: v for k, v in ours.items() if official[k] != v} == {}


def test_finetune_nc0_has_no_head() -> None:
    model = _meta("avfmae_pp_base", "finetune", num_classes=0)
    assert count_parameters(model) == param_counts()["AVF-MAE++_B_finetune_nc0"]["total"]


def test_tiny_is_small() -> None:
    assert count_parameters(_meta("avfmae_pp_tiny", "pretrain")) < 2_000_000
