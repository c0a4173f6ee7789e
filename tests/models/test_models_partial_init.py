"""Pre-training -> fine-tuning loads never drop encoder or fusion blocks silently (issue #21 §2).

A backbone whose blocks differ from the model's is a PartialInitError naming the blocks; the
explicit ``allow_partial=True`` loads what both have; the report counts backbone, decoder and head
tensors apart.  The tiny model (depth 2, 42 tensors per encoder block) keeps this fast.
"""

from __future__ import annotations

import pytest
import torch

from avf_models import PartialInitError, create_model, load_pretrained_into_finetune
from avf_models.convert import CheckpointMismatchError, ours_to_official_key

DEEPER = "the checkpoint has video and audio encoder blocks 2-3 that the model (depth 2) lacks"
SHALLOWER = "the model has video and audio encoder blocks 2-3 that the checkpoint (depth 2) lacks"


def _pretrained(depth: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny pre-training state dict of ``depth`` blocks per encoder, in the official key names."""
    torch.manual_seed(seed)
    model = create_model("avfmae_pp_tiny", depth=depth, depth_audio=depth)
    return {ours_to_official_key(k): v for k, v in model.state_dict().items()}


def test_a_deeper_checkpoint_is_refused_naming_the_blocks() -> None:
    model = create_model("avfmae_pp_tiny", "finetune", num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PartialInitError) as err:
        load_pretrained_into_finetune(model, _pretrained(depth=4))
    msg = str(err.value)
    assert DEEPER in msg and "168 pre-trained backbone tensors would be dropped" in msg
    assert "allow_partial=True" in msg and "\n" not in msg
    assert err.value.problems == [DEEPER]
    assert isinstance(err.value, CheckpointMismatchError)  # the avf-models CLI's one-line errors
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded


def test_opt_in_loads_the_shared_blocks_and_counts_each_kind() -> None:
    sd = _pretrained(depth=4)
    model = create_model("avfmae_pp_tiny", "finetune", num_classes=3)
    report = load_pretrained_into_finetune(model, sd, allow_partial=True)
    assert len(report.dropped) == 168 and all(".blocks.2." in k or ".blocks.3." in k for k in report.dropped)
    assert report.summary() == (
        f"loaded 392 backbone tensors; partial: {DEEPER}; dropped 168 checkpoint backbone tensors; "
        "skipped 130 decoder tensors (pre-training only), head new"
    )
    own = model.state_dict()
    assert torch.equal(own["encoder.blocks.1.mlp.fc1.weight"], sd["encoder.blocks.1.mlp.fc1.weight"])
    assert sorted(report.missing) == sorted(k for k in own if k.startswith(("fc_norm", "head", "layer_weights")))


def test_a_shallower_checkpoint_is_refused_and_opt_in_leaves_blocks_at_init() -> None:
    model = create_model("avfmae_pp_tiny", "finetune", num_classes=3, depth=4, depth_audio=4)
    with pytest.raises(PartialInitError, match="168 model backbone tensors would stay at random init") as err:
        load_pretrained_into_finetune(model, _pretrained(depth=2))
    assert err.value.problems == [SHALLOWER]
    report = load_pretrained_into_finetune(model, _pretrained(depth=2), allow_partial=True)
    assert not report.dropped and "168 model backbone tensors left at random init" in report.summary()


def test_a_matching_checkpoint_loads_with_no_backbone_dropped() -> None:
    sd = _pretrained(depth=2)
    model = create_model("avfmae_pp_tiny", "finetune", num_classes=3)
    report = load_pretrained_into_finetune(model, sd)
    assert not report.dropped and not report.problems and not report.unused
    assert report.summary() == "loaded 392 backbone tensors; skipped 130 decoder tensors (pre-training only), head new"
    # a video-only model has no use for the audio encoder and fusion: skipped, not an error
    video = create_model("avfmae_pp_tiny", "finetune", num_classes=3, modality="video")
    report = load_pretrained_into_finetune(video, sd)
    assert not report.dropped and len(report.unused) == 303
    assert report.summary() == (
        "loaded 89 backbone tensors; skipped 303 audio encoder and fusion tensors (not in this model), "
        "130 decoder tensors (pre-training only), head new"
    )
    # a fine-tuned checkpoint into the same model: everything, head included
    same = load_pretrained_into_finetune(create_model("avfmae_pp_tiny", "finetune", num_classes=3), model.state_dict())
    assert same.summary() == "loaded 392 backbone tensors, head loaded" and not same.missing


def test_stray_tensors_and_missing_parts_are_named() -> None:
    model = create_model("avfmae_pp_tiny", "finetune", num_classes=3)
    sd = _pretrained()
    del sd["encoder.norm.weight"]
    sd["encoder_fusion.blocks.0.extra"] = torch.zeros(1)
    with pytest.raises(PartialInitError) as err:
        load_pretrained_into_finetune(model, sd)
    assert err.value.problems == [
        "the model has video encoder tensor encoder.norm.weight that the checkpoint lacks",
        "the checkpoint has fusion tensor encoder_fusion.blocks.0.extra that the model lacks",
    ]
    # a video-only checkpoint cannot fill an audio-visual model
    video = create_model("avfmae_pp_tiny", "finetune", num_classes=3, modality="video").state_dict()
    with pytest.raises(PartialInitError, match="the checkpoint has no audio encoder .the model's 89 tensors."):
        load_pretrained_into_finetune(model, video)
