"""The fast loader makes the views the reference pipeline made: same windows, crops, gains and
labels, the same numbers up to uint8 rounding of the resized frames (issue 13 part 1)."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from avf_data.shards import VideoReader, decode_mp4, decode_sample, encode_mp4, iter_raw_samples
from avf_models.features import log_mel_fbank, log_mel_fbank_batch, normalize_video
from avf_train.data import ClipStream, _seed, model_inputs, release, resolve_shards
from avf_train.transforms import (
    ClipTransformConfig,
    audio_window,
    multi_scale_crop,
    sample_frame_indices,
    to_float,
    view_start,
)


def _moving_clip(n: int = 80, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    frames = [np.stack([(xx * 3 + t * 5) % 256, (yy * 2 + t * 3) % 256, ((xx + yy) * t) % 256], -1) for t in range(n)]
    return np.asarray(frames, dtype=np.uint8)


def _encode(frames: np.ndarray, options: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = options
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize("encoding", ["shards", "old-shards", "short-gop"])
def test_video_reader_gives_the_frames_of_a_full_decode(encoding, monkeypatch):
    frames = _moving_clip()
    data = {
        "shards": lambda: encode_mp4(frames),  # this writer's settings: P every 4th frame
        "old-shards": lambda: _encode(frames, {"crf": "18", "preset": "veryfast"}),  # b-pyramid, adaptive B
        "short-gop": lambda: _encode(frames, {"crf": "18", "preset": "veryfast", "g": "8"}),
    }[encoding]()
    full, fps = decode_mp4(data)
    monkeypatch.setattr(VideoReader, "SEEK_MIN_FRAMES", 8)  # exercise the seek on a short clip
    for start in (0, 1, 2, 3, 17, 19):
        idx = sample_frame_indices(len(full), 16, 4, start)  # clamped at the end: repeats
        reader = VideoReader(data)
        assert reader.num_frames == len(full) and reader.fps == fps
        got = reader.frames(idx, out=np.zeros((16, 64, 64, 3), np.uint8) if start % 2 else None)
        assert np.array_equal(got, full[idx]), (encoding, start)
    with pytest.raises(RuntimeError, match="once"):
        reader.frames([0])


def test_batched_fbank_equals_the_model_fbank():
    rng = np.random.default_rng(0)
    lengths = [41600, 41599, 30000, 399, 90000]
    waves = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        waves[i, :n] = torch.from_numpy((0.2 * rng.standard_normal(n) + 0.01).astype(np.float32))
    waves[3, 399:] = 7.0  # beyond a row's length: ignored
    batch = log_mel_fbank_batch(waves, 256, torch.tensor(lengths))
    for i, n in enumerate(lengths):
        assert torch.allclose(batch[i], log_mel_fbank(waves[i, :n], 256), atol=1e-4), n


def _reference_view(raw: dict, cfg: ClipTransformConfig, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """The loader as it was: whole clip decoded, float crop/resize, torchaudio fbank."""
    clip = decode_sample(raw)
    start = view_start(len(clip.frames), cfg, rng)
    idx = sample_frame_indices(len(clip.frames), cfg.num_frames, cfg.sampling_rate, start)
    x = multi_scale_crop(to_float(clip.frames[idx]), cfg.image_size, cfg.crop_scales, rng)
    video = normalize_video(x.permute(1, 0, 2, 3).contiguous())
    wav = torch.from_numpy(
        audio_window(clip.audio, clip.sample_rate, clip.fps, int(idx[0]), cfg.num_frames * cfg.sampling_rate)
    )
    wav = wav * float(rng.beta(10.0, 10.0) + 0.5)
    return {"video": video, "audio": log_mel_fbank(wav, cfg.audio_frames).unsqueeze(0), "label": clip.label}


@pytest.mark.parametrize("device_features", [True, False])
def test_pretraining_views_match_the_reference_loader(shards, device_features):
    paths = resolve_shards(shards["labelled"])
    raws = {r["__key__"]: r for r in iter_raw_samples(paths)}
    cfg = ClipTransformConfig(mode="pretrain")
    seed, batch_size = 5, 4
    stream = ClipStream(
        paths, cfg, batch_size, train=True, seed=seed, shuffle_buffer=1, device_features=device_features
    )
    lo, hi = (np.array(IMAGENET) for IMAGENET in ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    checked, cropped = 0, 0
    for batch in stream:
        _, pass_index, batch_index = batch["pos"]
        keys, labels = list(batch["key"]), batch["label"].tolist()
        if device_features:  # 160 px shards: the frames travel whole, their crop box beside them
            cropped += sum(box[2:] != (160, 160) for box in batch["box"])
        video, audio = model_inputs(batch)
        assert video.shape == (batch_size, 3, 16, 160, 160) and video.dtype == torch.float32
        assert audio.shape == (batch_size, 1, 256, 128) and audio.dtype == torch.float32
        bounds = torch.tensor(-lo / hi).view(3, 1, 1, 1), torch.tensor((1 - lo) / hi).view(3, 1, 1, 1)
        assert ((video >= bounds[0] - 1e-5) & (video <= bounds[1] + 1e-5)).all()
        for row, key in enumerate(keys):
            sample = batch_index * batch_size + row  # no shuffle buffer: stream order
            ref = _reference_view(raws[key], cfg, np.random.default_rng(_seed(seed, 2, pass_index, 0, sample, 0)))
            assert labels[row] == ref["label"]  # labels stay with their clips
            diff = (video[row] - ref["video"]).abs()
            if device_features:  # cropped and resized in float by model_inputs, as the reference does
                assert diff.max() < 1e-4
            else:
                assert diff.max() < 0.025 and diff.mean() < 0.01  # uint8 rounding of the resized frames
            assert torch.allclose(audio[row], ref["audio"], atol=1e-4)
            checked += 1
        if checked >= 8:
            break
    assert checked == 8
    assert cropped > 0 or not device_features


def test_released_buffers_are_reused_and_held_ones_are_kept(shards):
    paths = resolve_shards(shards["unlabelled"])
    cfg = ClipTransformConfig(mode="pretrain", num_frames=4, image_size=32)
    stream = iter(ClipStream(paths, cfg, 2, train=True, shuffle_buffer=1, device_features=True))
    first, second = next(stream), next(stream)
    kept = first["video"].clone()
    assert first["video"].data_ptr() != second["video"].data_ptr()  # first is still held
    third = next(stream)
    assert third["video"].data_ptr() not in (first["video"].data_ptr(), second["video"].data_ptr())
    assert torch.equal(first["video"], kept)  # nothing wrote into a batch not released
    ptr = second["video"].data_ptr()
    model_inputs(second)
    assert "video" not in second and "wave" not in second  # nothing left to read once released
    fourth = next(stream)
    assert fourth["video"].data_ptr() == ptr  # the released buffers took the next batch
    release(first)
    assert fourth["video"].dtype == torch.uint8 and fourth["video"].shape == (2, 4, 32, 32, 3)
    # 160 px frames for a 32 px model: cropped and resized in the worker, nothing left to crop
    assert fourth["box"] == [(0, 0, 32, 32)] * 2
