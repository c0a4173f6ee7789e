"""The protocol registry: complete, consistent, and the paper's numbers in place."""

from __future__ import annotations

import pytest

from avf_eval.metrics.registry import metric_keys
from avf_eval.protocols import PUBLISHED_MODELS, get_protocol, load_registry


def test_seventeen_benchmarks() -> None:
    registry = load_registry()
    assert len({p.benchmark for p in registry.values()}) == 17
    assert len({p.dataset for p in registry.values()}) == 15  # MAFW and CREMA-D give two benchmarks each


@pytest.mark.parametrize("name", list(load_registry()))
def test_every_protocol_is_complete(name: str) -> None:
    p = get_protocol(name)
    if p.kind == "classification":
        assert p.num_classes >= 2 and len(set(p.classes)) == p.num_classes
    else:
        assert p.dimensions
    assert p.folds.scheme == "loso" or p.folds.count >= 1
    assert p.metrics and p.primary_metric in metric_keys(p.metrics, p.dimensions)
    assert set(p.published) == set(PUBLISHED_MODELS)
    # AVF-MAE++ numbers are printed for every benchmark in the paper
    for model in ("avf_mae_pp_b", "avf_mae_pp_l", "avf_mae_pp_h"):
        assert any(v is not None for v in p.published[model].values())


def test_specific_protocol_facts() -> None:
    iemocap = get_protocol("iemocap")
    assert iemocap.map_label("Excitement") == iemocap.classes.index("happiness")
    assert iemocap.folds.scheme == "session" and iemocap.folds.count == 5
    assert get_protocol("ravdess").folds.count == 6
    assert get_protocol("msp-improv").folds.count == 6
    assert get_protocol("crema-d-4").fold_aggregation == "last"
    casme = get_protocol("casme2")
    assert casme.classes == ("negative", "positive", "surprise")
    assert casme.map_label("repression") == 0 and casme.map_label("others") is None
    assert casme.fold_aggregation == "pooled" and casme.folds.scheme == "loso"
    assert get_protocol("mafw-11").published["avf_mae_pp_h"] == {"uar": 46.05, "war": 60.24}
    assert get_protocol("werewolf-xl").published["hicmae_b"]["pcc_valence"] == 69.23
    assert get_protocol("mer-multi").published["hicmae_b"]["wa_f1"] is None  # ambiguous row in the paper
    with pytest.raises(ValueError, match="not a class"):
        iemocap.map_label("boredom")
    with pytest.raises(KeyError, match="unknown protocol"):
        get_protocol("nope")
    assert get_protocol("CREMA_D_6").name == "crema-d-6"
