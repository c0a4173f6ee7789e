"""The benchmark protocols of AVF-MAE++ (17 datasets) as validated data, plus fold generators."""

from avf_eval.protocols.registry import get_protocol, load_registry
from avf_eval.protocols.types import PUBLISHED_MODELS, FoldScheme, Protocol

__all__ = ["PUBLISHED_MODELS", "FoldScheme", "Protocol", "get_protocol", "load_registry"]
