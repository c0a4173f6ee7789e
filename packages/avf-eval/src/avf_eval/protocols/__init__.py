"""The benchmark protocols of AVF-MAE++ (17 datasets) as validated data, plus fold generators."""

from .registry import get_protocol, load_registry
from .types import PUBLISHED_MODELS, FoldScheme, Protocol

__all__ = ["PUBLISHED_MODELS", "FoldScheme", "Protocol", "get_protocol", "load_registry"]
