"""Label alignment for the labelled hybrid datasets (paper §4.2, Table 3), kept as data.

Post-pre-training merges several downstream datasets into one labelled hybrid. Each dataset
names its emotions differently ("Happy" vs "Happiness", "Fearful" vs "Fear"), so labels are
mapped *by name* onto the hybrid's classes. The CEA hybrid has 13 classes (Table 3, last row;
the paper's "Clam" is read as "Calm", RAVDESS's extra class). IEMOCAP's "Excitement" is merged
into Happy as the paper describes (§4.3). The MER hybrid uses the three-emotion paradigm
(Negative, Positive, Surprise) shared by all micro-expression sets.

A map can also be given as a YAML file ``{classes: [...], aliases: {name: class}}`` for corpora
outside this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from avf_data.settings import ConfigError

# Paper Table 3: the emotion names each targeted dataset uses.
TABLE3_DATASET_LABELS: dict[str, tuple[str, ...]] = {
    "MAFW": (
        "Anger",
        "Disgust",
        "Fear",
        "Happiness",
        "Neutral",
        "Sadness",
        "Surprise",
        "Contempt",
        "Anxiety",
        "Helplessness",
        "Disappointment",
    ),
    "DFEW": ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"),
    "MER-MULTI": ("Worried", "Happy", "Neutral", "Angry", "Surprise", "Sad"),
    "MER24-T&V": ("Worried", "Happy", "Neutral", "Angry", "Surprise", "Sad"),
    "IEMOCAP": ("Anger", "Happy", "Neutral", "Sad"),
    "CREMA-D": ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sadness"),
    "RAVDESS": ("Neutral", "Calm", "Happy", "Sad", "Angry", "Fearful", "Disgust", "Surprised"),
}

# Paper Table 3, "Labeled Hybrid" row: the 13 CEA classes in this (fixed) index order.
CEA13_CLASSES: tuple[str, ...] = (
    "Anger",
    "Disgust",
    "Fear",
    "Happy",
    "Neutral",
    "Sadness",
    "Surprise",
    "Worried",
    "Calm",
    "Contempt",
    "Anxiety",
    "Helplessness",
    "Disappointment",
)

# Every spelling in Table 3 (and the usual dataset spellings) -> hybrid class.
CEA13_ALIASES: dict[str, str] = {
    "anger": "Anger",
    "angry": "Anger",
    "ang": "Anger",
    "disgust": "Disgust",
    "disgusted": "Disgust",
    "dis": "Disgust",
    "fear": "Fear",
    "fearful": "Fear",
    "fea": "Fear",
    "happy": "Happy",
    "happiness": "Happy",
    "hap": "Happy",
    "excitement": "Happy",
    "excited": "Happy",
    "exc": "Happy",
    "neutral": "Neutral",
    "neu": "Neutral",
    "sad": "Sadness",
    "sadness": "Sadness",
    "surprise": "Surprise",
    "surprised": "Surprise",
    "sur": "Surprise",
    "worried": "Worried",
    "worry": "Worried",
    "calm": "Calm",
    "clam": "Calm",
    "contempt": "Contempt",
    "anxiety": "Anxiety",
    "anxious": "Anxiety",
    "helplessness": "Helplessness",
    "helpless": "Helplessness",
    "disappointment": "Disappointment",
    "disappointed": "Disappointment",
}

MER3_CLASSES: tuple[str, ...] = ("Negative", "Positive", "Surprise")
MER3_ALIASES: dict[str, str] = {
    "negative": "Negative",
    "positive": "Positive",
    "surprise": "Surprise",
    "surprised": "Surprise",
}


@dataclass
class LabelMap:
    """Maps a clip's ``label_name`` (or, failing that, its integer label) to a hybrid class index."""

    name: str
    classes: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index(self, meta: dict[str, Any]) -> int:
        """Class index for one clip's metadata; raises with the clip's label when it can't map."""
        raw = meta.get("label_name")
        if raw is None:
            raise KeyError(
                f"label map {self.name!r} needs 'label_name' in the clip metadata; got label={meta.get('label')!r}"
            )
        key = str(raw).strip().lower()
        target = self.aliases.get(key)
        if target is None:
            direct = {c.lower(): c for c in self.classes}
            target = direct.get(key)
        if target is None:
            raise KeyError(f"label {raw!r} has no class in label map {self.name!r} ({list(self.classes)})")
        return self.classes.index(target)


def get_label_map(spec: str) -> LabelMap | None:
    """``""`` -> None (use the shard's integer labels), ``cea13``, ``mer3`` or a YAML file."""
    if not spec:
        return None
    if spec == "cea13":
        return LabelMap("cea13", CEA13_CLASSES, dict(CEA13_ALIASES))
    if spec == "mer3":
        return LabelMap("mer3", MER3_CLASSES, dict(MER3_ALIASES))
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"label map {spec!r} is neither 'cea13', 'mer3' nor an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"label map {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"label map {path} must be a mapping {{classes: [...], aliases: {{...}}}}")
    classes = tuple(data.get("classes") or ())
    if not classes:
        raise ConfigError(f"label map {path} has no 'classes' list")
    aliases = {str(k).lower(): str(v) for k, v in (data.get("aliases") or {}).items()}
    unknown = sorted(set(aliases.values()) - set(classes))
    if unknown:
        raise ConfigError(f"label map {path}: aliases point at unknown classes {unknown}")
    return LabelMap(path.stem, classes, aliases)
