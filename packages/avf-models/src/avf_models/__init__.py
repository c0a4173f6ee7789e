"""avf-models: AVF-MAE++ audio-visual masked autoencoders (dual masking, improved LGI-Former, IAV-CL).

Public API::

    create_model(name, stage="pretrain"|"finetune", num_classes=None, **overrides) -> nn.Module
    load_pretrained_into_finetune(model, state_dict, allow_partial=False) -> LoadReport
    load_model(path, stage=None, **overrides) -> nn.Module   (our converted or official .pth)
    optim.param_groups(model, weight_decay, layer_decay) -> AdamW groups (official rules)
    convert_checkpoint(src, dst) / convert_official_state_dict(state_dict)
    attention.set_backend("auto"|"sdpa"|"xformers")
    features.log_mel_fbank(waveform_16k) -> (256, 128)
    masking.PretrainMaskGenerator(config)(batch, generator=...) -> PretrainMasks
"""

from . import attention, features, masking, optim
from .config import CONFIGS, InputSpec, ModelConfig, get_config
from .convert import (
    CheckpointMismatchError,
    LoadReport,
    PartialInitError,
    convert_checkpoint,
    convert_official_state_dict,
    load_checkpoint,
    load_model,
    load_pretrained_into_finetune,
)
from .factory import MODEL_NAMES, count_parameters, create_model
from .finetune import AVFMAEFinetune
from .masking import PretrainMasks
from .pretrain import AVFMAEPretrain, PretrainOutput

__version__ = "0.1.0"

__all__ = [
    "AVFMAEFinetune",
    "AVFMAEPretrain",
    "CONFIGS",
    "CheckpointMismatchError",
    "InputSpec",
    "LoadReport",
    "MODEL_NAMES",
    "ModelConfig",
    "PartialInitError",
    "PretrainMasks",
    "PretrainOutput",
    "attention",
    "convert_checkpoint",
    "convert_official_state_dict",
    "count_parameters",
    "create_model",
    "features",
    "get_config",
    "load_checkpoint",
    "load_model",
    "load_pretrained_into_finetune",
    "masking",
    "optim",
]
