"""The demo inputs are what the issue promises: real face, real speech, one branch each."""

import av
import dlib
import numpy as np
import pytest

from avf_data.demo import load_speech, make_demo_inputs, speech_envelope


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_inputs(tmp_path_factory.mktemp("demo"))


def _frames(path, count=3):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        has_audio = len(container.streams.audio) == 1
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    picks = np.linspace(0, len(frames) - 1, count).astype(int)
    return [frames[i] for i in picks], len(frames), has_audio


@pytest.mark.parametrize(
    "name,faces",
    [("single_face", 1), ("two_faces", 2), ("no_face", 0), ("long_silence", 1), ("shifted_audio", 1), ("scene_cut", 1)],
)
def test_dlib_sees_the_promised_faces(demo, name, faces):
    detector = dlib.get_frontal_face_detector()
    frames, count, has_audio = _frames(demo[name])
    assert has_audio and count >= 100
    assert [len(detector(f, 0)) for f in frames] == [faces] * len(frames)


def test_corrupt_is_unreadable(demo):
    with pytest.raises(av.error.InvalidDataError):
        av.open(str(demo["corrupt"]))


def test_mouth_follows_speech():
    env = speech_envelope(load_speech(1))
    assert env.max() == 1.0 and (env == 0).mean() > 0.05  # pauses close the mouth
    assert 150 < len(env) < 250  # ~7.7 s at 25 fps


def test_written_audio_is_not_delayed(tmp_path):
    """AAC priming must not shift the speech against the mouth (it would bias every sync score)."""
    from avf_data.demo import write_av

    audio = np.zeros(32000, np.float32)
    audio[16000:16040] = 0.9
    write_av(tmp_path / "click.mp4", np.zeros((50, 64, 64, 3), np.uint8), audio)
    with av.open(str(tmp_path / "click.mp4")) as container:
        decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(container.streams.audio[0])])
    assert abs(int(np.argmax(np.abs(decoded))) - 16000) < 40  # within 2.5 ms
