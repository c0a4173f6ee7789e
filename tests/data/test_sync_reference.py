"""SyncNet fed exactly what the reference pipeline feeds it, checked against an oracle.

The oracle is a test-side transcription of joonson/syncnet_python (``run_pipeline.py``
``crop_video`` and ``SyncNetInstance.evaluate`` / ``calc_pdist``), written for these tests,
run in memory. Its network is :class:`SyncNetV2` (the official module layout, 3-D
convolutions, unfused BatchNorm); its MFCC is ``python_speech_features.mfcc`` itself. Our
scorer runs the fast network on :func:`reference_crops` of the same source frames.

What the oracle deliberately leaves out of the reference, and our pipeline does not copy:
its frames pass through an XVID .avi and JPEG files (lossy, so pixel values drift), and
its crop's audio goes through an .avi mux whose MP3 round trip delays it by ~25 ms. Both
feed the same pixels / samples here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from syncnet_fixtures import write_weights

from avf_data.stages.sync import SyncConfig, SyncNetScorer, build_sync_scorer
from avf_data.stages.syncnet_input import (
    array_cutter,
    downmix_reference,
    reference_crops,
    reference_rects,
    to_int16,
)

CLIP = slice(20, 70)  # 2 s of the demo's single_face clip, speech throughout


# --------------------------------------------------------------------------- the oracle


def oracle_crop_video(frames_bgr: list[np.ndarray], boxes: np.ndarray, crop_scale: float = 0.4) -> list[np.ndarray]:
    """run_pipeline.py crop_video: box size and centre per frame, medfilt 13, pad 110, cut, 224x224."""
    import cv2
    from scipy import signal

    dets = {"x": [], "y": [], "s": []}
    for det in boxes:
        dets["s"].append(max(det[3] - det[1], det[2] - det[0]) / 2)
        dets["y"].append((det[1] + det[3]) / 2)
        dets["x"].append((det[0] + det[2]) / 2)
    for key in dets:
        dets[key] = signal.medfilt(dets[key], kernel_size=13)
    crops = []
    for fidx, image in enumerate(frames_bgr):
        cs = crop_scale
        bs = dets["s"][fidx]
        bsi = int(bs * (1 + 2 * cs))
        frame = np.pad(image, ((bsi, bsi), (bsi, bsi), (0, 0)), "constant", constant_values=(110, 110))
        my = dets["y"][fidx] + bsi
        mx = dets["x"][fidx] + bsi
        face = frame[int(my - bs) : int(my + bs * (1 + 2 * cs)), int(mx - bs * (1 + cs)) : int(mx + bs * (1 + cs))]
        crops.append(cv2.resize(face, (224, 224)))
    return crops


def oracle_evaluate(net, crops_bgr: list[np.ndarray], audio_s16: np.ndarray, vshift: int = 15, batch_size: int = 20):
    """SyncNetInstance.evaluate on in-memory frames and 16 kHz int16 samples."""
    import python_speech_features

    im = np.stack(crops_bgr, axis=3)
    im = np.expand_dims(im, axis=0)
    im = np.transpose(im, (0, 3, 4, 1, 2))  # (1, 3, T, 224, 224)
    imtv = torch.from_numpy(im.astype(float)).float()
    mfcc = zip(*python_speech_features.mfcc(audio_s16, 16000), strict=False)
    mfcc = np.stack([np.array(i) for i in mfcc])
    cc = np.expand_dims(np.expand_dims(mfcc, axis=0), axis=0)
    cct = torch.from_numpy(cc.astype(float)).float()
    min_length = min(len(crops_bgr), math.floor(len(audio_s16) / 640))
    lastframe = min_length - 5
    im_feat, cc_feat = [], []
    with torch.no_grad():
        for i in range(0, lastframe, batch_size):
            frames = range(i, min(lastframe, i + batch_size))
            im_in = torch.cat([imtv[:, :, v : v + 5, :, :] for v in frames], 0)
            im_feat.append(net.forward_lip(im_in))
            cc_in = torch.cat([cct[:, :, :, v * 4 : v * 4 + 20] for v in frames], 0)
            cc_feat.append(net.forward_aud(cc_in))
    im_feat, cc_feat = torch.cat(im_feat, 0), torch.cat(cc_feat, 0)
    # calc_pdist
    win_size = vshift * 2 + 1
    feat2p = torch.nn.functional.pad(cc_feat, (0, 0, vshift, vshift))
    dists = [
        torch.nn.functional.pairwise_distance(im_feat[[i], :].repeat(win_size, 1), feat2p[i : i + win_size, :])
        for i in range(len(im_feat))
    ]
    mdist = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    offset = vshift - minidx
    conf = torch.median(mdist) - minval
    return int(offset), float(conf), float(minval), mdist.numpy()


# --------------------------------------------------------------------------- inputs


def _decode_source(path):
    """Every frame (RGB, source resolution) and the audio as ``ffmpeg -ac 1 -ar 16000 pcm_s16le``."""
    import av

    with av.open(str(path)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])
    with av.open(str(path)) as c:
        rs = av.AudioResampler(format="s16", layout="mono", rate=16000)
        chunks = [o.to_ndarray().reshape(-1) for f in c.decode(c.streams.audio[0]) for o in rs.resample(f)]
        chunks += [o.to_ndarray().reshape(-1) for o in rs.resample(None)]
    return frames, np.concatenate(chunks)


def _face_track(n: int, seed: int = 0) -> np.ndarray:
    """Per-frame face boxes round the demo head (centre 320, 180) with detector jitter, two
    outlier detections (the median filter must drop them) and a box large enough that the
    crop runs past the bottom of the 640x360 frame (grey padding)."""
    rng = np.random.default_rng(seed)
    cx = 320 + 6 * np.sin(0.11 * np.arange(n)) + rng.normal(0, 2.5, n)
    cy = 178 + 4 * np.sin(0.07 * np.arange(n)) + rng.normal(0, 2.5, n)
    w = 196 + rng.normal(0, 4, n)
    h = 214 + rng.normal(0, 4, n)
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    boxes[n // 3] += [60, -40, 90, -10]
    boxes[2 * n // 3] *= 0.7
    return boxes


class _View:
    """The view the curation pipeline hands ``score_clip``: source frames behind cut_region."""

    def __init__(self, frames_rgb, audio, boxes):
        self._cut = array_cutter(frames_rgb)
        self.crop_frames = frames_rgb[:, 100:260, 240:400]  # unused by the reference path
        self.audio = audio
        self.fps = 25.0
        self.sample_rate = 16000
        self.face_boxes = boxes

    def cut_region(self, k, x0, y0, x1, y1, out_w, out_h):
        return self._cut(k, x0, y0, x1, y1, out_w, out_h)


@pytest.fixture(scope="module")
def clip(demo_inputs):
    frames, audio = _decode_source(demo_inputs["single_face"])
    f = frames[CLIP]
    a = audio[CLIP.start * 640 : CLIP.stop * 640]
    return f, a, _face_track(len(f))


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    path = write_weights(tmp_path_factory.mktemp("w") / "syncnet_v2.model")
    return build_sync_scorer(SyncConfig(), path)


# --------------------------------------------------------------------------- tests


def test_crops_equal_the_reference_crop_video(clip):
    frames, _, boxes = clip
    ours = reference_crops(array_cutter(frames), boxes)
    ref = oracle_crop_video([f[..., ::-1] for f in frames], boxes)  # the reference reads BGR
    assert ours.shape == (len(frames), 224, 224, 3) and ours.dtype == np.uint8
    assert np.array_equal(ours, np.stack(ref)[..., ::-1])
    rects = reference_rects(boxes)
    assert (rects[:, 3] > 360).any()  # the grey padding path is exercised
    assert (ours[rects[:, 3] > 370][:, -3:] == 110).all()  # below the frame: grey 110


def test_scorer_equals_the_reference_evaluate(clip, scorer):
    frames, audio_s16, boxes = clip
    ref_offset, ref_conf, ref_min, ref_mdist = oracle_evaluate(
        scorer.model, oracle_crop_video([f[..., ::-1] for f in frames], boxes), audio_s16
    )
    assert 3 < ref_mdist.mean() < 30  # realistic distance scale (embedding_scale 0.01)
    view = _View(frames, audio_s16.astype(np.float32) / 32768.0, boxes)
    r = scorer.score_clip(view)
    assert r.valid and r.method == "syncnet_v2" and r.n_windows == len(frames) - 5
    assert r.note is None  # reference geometry, not the training-crop fallback
    np.testing.assert_allclose(r.mean_dists, ref_mdist, rtol=0, atol=1e-4)
    assert r.offset_frames == ref_offset
    assert r.confidence == pytest.approx(ref_conf, abs=1e-4)
    assert r.min_distance == pytest.approx(ref_min, abs=1e-4)


def test_batching_across_clips_changes_nothing(clip, scorer):
    """score_many packs windows of several clips into shared forward passes."""
    from avf_data.stages.sync import SyncInput

    frames, audio_s16, boxes = clip
    crops = reference_crops(array_cutter(frames), boxes)
    audio = audio_s16.astype(np.float32) / 32768.0
    alone = [
        scorer.score_reference(crops[:20], audio[: 20 * 640]),
        scorer.score_reference(crops[30:], audio[30 * 640 :]),
    ]
    old = scorer.cfg.batch_size
    scorer.cfg.batch_size = 12  # 15 + 15 windows -> pieces of both clips share batches
    try:
        both = scorer.score_many([SyncInput(crops[:20], audio[: 20 * 640]), SyncInput(crops[30:], audio[30 * 640 :])])
    finally:
        scorer.cfg.batch_size = old
    for a, b in zip(alone, both, strict=False):
        np.testing.assert_allclose(a.mean_dists, b.mean_dists, rtol=0, atol=1e-4)
        assert a.offset_frames == b.offset_frames


def test_audio_is_rounded_to_16_bit_like_the_reference(scorer, monkeypatch):
    """The MFCC sees int16 values: float audio that differs below 1 LSB scores identically."""
    from avf_data.stages import syncnet as sn

    seen = []
    real = sn.mfcc_psf
    monkeypatch.setattr(sn, "mfcc_psf", lambda x, sr: seen.append(np.array(x)) or real(x, sr))
    rng = np.random.default_rng(1)
    q = rng.integers(-3000, 3000, 16000).astype(np.float32)
    crops = np.zeros((25, 224, 224, 3), np.uint8)
    scorer.score_reference(crops, q / 32768.0 + 0.3 / 32768.0)
    assert np.array_equal(seen[0], q)


def test_downmix_matches_ffmpeg_mono_s16():
    """ffmpeg -ac 1 -acodec pcm_s16le: (L+R)/2, lrintf(x * 32768); PyAV's float mono is (L+R)/sqrt 2."""
    import av

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 4800)) * 0.3).clip(-1, 1).astype(np.float32)
    frame = av.AudioFrame.from_ndarray(x, format="fltp", layout="stereo")
    frame.sample_rate = 16000
    rs = av.AudioResampler(format="s16", layout="mono", rate=16000)
    s16 = np.concatenate([o.to_ndarray().reshape(-1) for o in [*rs.resample(frame), *rs.resample(None)]])
    assert np.array_equal(s16.astype(np.float64), to_int16(downmix_reference(x, channel_axis=0)))
    assert np.array_equal(downmix_reference(x.T), (x[0] + x[1]) / 2)
    with pytest.raises(ValueError, match="mono or stereo"):
        downmix_reference(np.zeros((10, 6)))


def test_reference_rects_follow_the_median_filter():
    boxes = np.tile([100.0, 50.0, 200.0, 170.0], (30, 1))  # s = 60, centre (150, 110)
    boxes[15] = [400, 300, 700, 600]  # one wild detection
    rects = reference_rects(boxes)
    # interior frames: the outlier is filtered away; rows y-s .. y+1.8s, cols x-1.4s .. x+1.4s
    assert rects[15].tolist() == [66, 50, 234, 218]
    # medfilt zero-pads: the first frame's median over [0]*6 + 7 real values is the smallest real one
    assert rects[0].tolist() == rects[15].tolist()
    with pytest.raises(ValueError, match=r"\(T, 4\)"):
        reference_rects(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        reference_rects(np.full((3, 4), np.nan))


def test_view_without_face_boxes_uses_the_training_crop(clip, scorer):
    frames, audio_s16, _ = clip
    view = _View(frames, audio_s16.astype(np.float32) / 32768.0, None)
    r = scorer.score_clip(view)
    assert r.valid and "160 px training crop" in r.note


def test_fast_network_matches_the_official_layout():
    from syncnet_fixtures import random_official_state_dict

    from avf_data.stages import syncnet as sn

    net = sn.SyncNetV2()
    net.load_state_dict(random_official_state_dict(3, 0.01), strict=False)
    net.eval()
    fast = sn.SyncNetFast(net).eval()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 224, 224, 3), dtype=np.uint8)
    bgr = torch.from_numpy(np.ascontiguousarray(rgb[..., ::-1])).permute(3, 0, 1, 2)[None].float()
    mf = torch.from_numpy(rng.normal(0, 10, (5, 1, 13, 20)).astype(np.float32))
    with torch.inference_mode():
        ref_v = torch.cat([net.forward_lip(bgr[:, :, i : i + 5]) for i in range(5)])
        v = fast.lip(sn.lip_windows(rgb, 0, 5))
        torch.testing.assert_close(v, ref_v, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fast.aud(mf), net.forward_aud(mf), rtol=1e-4, atol=1e-4)
    assert isinstance(SyncNetScorer(net).fast, sn.SyncNetFast)
