"""Curation stages. Each module holds one stage: its config dataclass and its pure functions.

1. :mod:`.scene`        scene cuts (PySceneDetect) and short/incomplete segment removal
2. :mod:`.face_filter`  dlib HOG face check on a few sampled frames
3. :mod:`.silence`      librosa silence split and min/max clip length
4. :mod:`.crop`         RetinaFace tracking, Savitzky-Golay smoothing, fixed crop window
5. :mod:`.sync` / :mod:`.quality`  audio-visual sync and blur/motion filter
"""
