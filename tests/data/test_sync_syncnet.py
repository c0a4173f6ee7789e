"""Stage 5a sync, SyncNet v2 path: architecture, official weight layout, loader, offset search.

No official weights are available offline: a randomly initialised state dict with
the official key names and shapes is written to tmp_path and loaded through the
real loader. For a known answer, the embedding step is replaced so that video and
audio embeddings match at a chosen shift.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from syncnet_fixtures import random_official_state_dict

from avf_data.stages import syncnet as sn
from avf_data.stages.sync import (
    METHOD_SYNCNET,
    SyncConfig,
    SyncNetScorer,
    build_sync_scorer,
    sync_reject_reason,
)

# Independent spot checks of the official syncnet_v2.model layout
# (joonson/syncnet_python SyncNetModel.S; nn.Sequential indices).
OFFICIAL_SPOT_CHECKS = {
    "netcnnaud.0.weight": (64, 1, 3, 3),
    "netcnnaud.1.running_var": (64,),
    "netcnnaud.4.weight": (192, 64, 3, 3),
    "netcnnaud.8.weight": (384, 192, 3, 3),
    "netcnnaud.11.weight": (256, 384, 3, 3),
    "netcnnaud.14.weight": (256, 256, 3, 3),
    "netcnnaud.18.weight": (512, 256, 5, 4),
    "netcnnaud.19.running_mean": (512,),
    "netfcaud.0.weight": (512, 512),
    "netfcaud.1.weight": (512,),
    "netfcaud.3.weight": (1024, 512),
    "netfclip.3.bias": (1024,),
    "netcnnlip.0.weight": (96, 3, 5, 7, 7),
    "netcnnlip.4.weight": (256, 96, 1, 5, 5),
    "netcnnlip.8.weight": (256, 256, 1, 3, 3),
    "netcnnlip.11.weight": (256, 256, 1, 3, 3),
    "netcnnlip.14.weight": (256, 256, 1, 3, 3),
    "netcnnlip.18.weight": (512, 256, 1, 6, 6),
    "netcnnlip.19.bias": (512,),
}


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "syncnet_v2.model"
    sd = random_official_state_dict()
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope="module")
def loaded(weights_file):
    """One SyncNet scorer built through the real loader, shared by the slower tests."""
    return build_sync_scorer(SyncConfig(), weights_file[0])


def test_model_state_dict_matches_official_layout():
    sd = sn.SyncNetV2().state_dict()
    own = {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert own == sn.OFFICIAL_STATE_DICT_SHAPES
    assert len(own) == 88
    assert set(sd) - set(own) == {
        k[: -len("running_mean")] + "num_batches_tracked" for k in own if k.endswith("running_mean")
    }
    for k, shape in OFFICIAL_SPOT_CHECKS.items():
        assert sn.OFFICIAL_STATE_DICT_SHAPES[k] == shape, k
    n_params = sum(int(np.prod(s)) for k, s in own.items() if "running" not in k)
    assert n_params == 13_631_616


def test_branch_shapes():
    m = sn.SyncNetV2().eval()
    with torch.no_grad():
        assert m.forward_aud(torch.zeros(2, 1, 13, 20)).shape == (2, 1024)
        assert m.forward_lip(torch.zeros(1, 3, 5, 224, 224)).shape == (1, 1024)
        x = torch.randn(1, 3, 7, 224, 224) * 50 + 120
        seq = m.lip_features(x)  # 3 sliding windows in one pass
        win = torch.cat([m.forward_lip(x[:, :, i : i + 5]) for i in range(3)])
    assert seq.shape == (3, 1024)
    torch.testing.assert_close(seq, win, rtol=1e-4, atol=1e-4)


def test_loader_loads_official_layout(weights_file):
    path, sd = weights_file
    scorer = build_sync_scorer(SyncConfig(), path)
    assert isinstance(scorer, SyncNetScorer) and scorer.method == METHOD_SYNCNET == "syncnet_v2"
    loaded = scorer.model.state_dict()
    for k, v in sd.items():
        torch.testing.assert_close(loaded[k], v)
    assert not scorer.model.training


def test_loader_accepts_prefixed_and_num_batches_tracked(tmp_path):
    sd = {**random_official_state_dict(1), "netcnnaud.1.num_batches_tracked": torch.tensor(5)}
    p = tmp_path / "prefixed.model"
    torch.save({f"__S__.{k}": v for k, v in sd.items()}, p)
    m = sn.load_syncnet_v2(p)
    torch.testing.assert_close(m.state_dict()["netfclip.3.weight"], sd["netfclip.3.weight"])


def test_loader_missing_file(tmp_path):
    p = tmp_path / "nope" / "syncnet_v2.model"
    with pytest.raises(sn.SyncNetWeightsError, match="not found") as e:
        build_sync_scorer(SyncConfig(), p)
    assert str(p) in str(e.value)


def test_loader_not_a_state_dict(tmp_path):
    p = tmp_path / "list.model"
    torch.save([torch.zeros(3)], p)
    with pytest.raises(sn.SyncNetWeightsError, match="not a state dict") as e:
        sn.load_syncnet_v2(p)
    assert str(p) in str(e.value)
    q = tmp_path / "text.model"
    q.write_text("this is not a torch file")
    with pytest.raises(sn.SyncNetWeightsError, match="cannot read") as e:
        sn.load_syncnet_v2(q)
    assert str(q) in str(e.value)


def test_loader_missing_key(tmp_path):
    sd = random_official_state_dict()
    del sd["netcnnlip.18.weight"]
    p = tmp_path / "missing.model"
    torch.save(sd, p)
    with pytest.raises(sn.SyncNetWeightsError, match=r"missing keys \[netcnnlip\.18\.weight\]") as e:
        sn.load_syncnet_v2(p)
    assert str(p) in str(e.value)


def test_loader_wrong_shape_and_unexpected_key(tmp_path):
    sd = random_official_state_dict()
    sd["netfcaud.3.weight"] = torch.zeros(512, 512)  # e.g. a 512-d variant
    sd["extra.weight"] = torch.zeros(1)
    p = tmp_path / "wrong.model"
    torch.save(sd, p)
    with pytest.raises(sn.SyncNetWeightsError) as e:
        sn.load_syncnet_v2(p)
    msg = str(e.value)
    assert str(p) in msg
    assert "netfcaud.3.weight: file (512, 512) vs expected (1024, 512)" in msg
    assert "unexpected keys [extra.weight]" in msg


def test_mfcc_layout():
    sr = 16000
    t = np.arange(sr) / sr
    audio = (0.3 * np.sin(2 * np.pi * 200 * t) * 32768).astype(np.float64)
    m = sn.mfcc_psf(audio, sr)
    # 25 ms / 10 ms frames: 1 + ceil((16000 - 400) / 160) = 99 columns, 13 coefficients.
    assert m.shape == (13, 99) and m.dtype == np.float32
    # c0 is the log of the frame energy (power spectrum sum), not a cepstral value.
    x = np.concatenate([audio[:1], audio[1:] - 0.97 * audio[:-1]])[:400]
    energy = (np.abs(np.fft.rfft(x, 512)) ** 2 / 512).sum()
    assert m[0, 0] == pytest.approx(np.log(energy), rel=1e-5)
    # Stationary tone: all columns (except the zero-padded last) nearly equal.
    assert np.abs(m[:, 1:-2] - m[:, 1:2]).max() < 1e-2 * np.abs(m[:, 1:2]).max() + 1e-3


def test_lip_input_geometry():
    frames = np.zeros((2, 160, 160, 3), np.uint8)
    frames[..., 0] = 200  # red in RGB
    out = sn.lip_input_from_face_crop(frames, face_crop_scale=1.8)
    assert out.shape == (2, 3, 224, 224) and out.dtype == np.float32
    # BGR order, raw 0..255; with the default margin SyncNet's window ends at the crop's bottom edge.
    assert out[:, 2, :-1].mean() == pytest.approx(200, abs=0.5) and out[:, 0, :-1].max() == 0
    # A tight crop (face box = whole crop) makes SyncNet's window leave the crop: grey 110 padding.
    tight = sn.lip_input_from_face_crop(frames, face_crop_scale=1.0)
    assert tight[0, :, -5:, :].mean() == pytest.approx(110, abs=1)  # below the chin
    assert tight[0, 2, 100:120, 100:120].mean() == pytest.approx(200, abs=1)


def _av(n_frames: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n_frames, 96, 96, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(n_frames * 640)).astype(np.float32)
    return frames, audio


def test_real_embedding_step_runs_batched(loaded):
    frames, audio = _av(10)
    loaded.cfg.batch_size = 2
    try:
        v, a = loaded.embed(frames, audio)
    finally:
        loaded.cfg.batch_size = 20
    # min(10 frames, 10*640/640) - 5 = 5 windows, as the original evaluate().
    assert v.shape == (5, 1024) and a.shape == (5, 1024)
    assert torch.isfinite(v).all() and torch.isfinite(a).all()
    v2, a2 = loaded.embed(frames, audio)  # one batch
    torch.testing.assert_close(v, v2, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(a, a2, rtol=1e-4, atol=1e-3)
    # Window i pairs frames i..i+4 with MFCC columns 4i..4i+19: window 0 only sees the first 5 frames.
    f2 = frames.copy()
    f2[6:] = 0
    v3, _ = loaded.embed(f2, audio)
    torch.testing.assert_close(v3[:2], v[:2], rtol=1e-4, atol=1e-3)
    assert not torch.allclose(v3[2:], v[2:], atol=1e-3)
    r = loaded.score(frames, audio)
    assert r.method == METHOD_SYNCNET and r.valid and r.n_windows == 5
    assert r.min_distance is not None and r.confidence >= 0
    assert -15 <= r.offset_frames <= 15
    json.dumps(r.to_json())


class _KnownShift:
    """Embeddings where audio window ``i + d`` carries video window ``i``'s content."""

    def __init__(self, d: int, n: int = 60, dim: int = 1024, noise: float = 0.3, seed: int = 0):
        g = np.random.default_rng(seed)
        base = g.standard_normal((n + 40, dim)).astype(np.float32)
        self.video = torch.from_numpy(base[20 : 20 + n])
        self.audio = torch.from_numpy(
            base[20 - d : 20 - d + n] + noise * g.standard_normal((n, dim)).astype(np.float32)
        )

    def __call__(self, frames, audio):
        return self.video, self.audio


@pytest.mark.parametrize(
    "d, expected_offset, kept", [(0, 0, True), (2, -2, True), (-3, 3, True), (12, -12, False), (-7, 7, False)]
)
def test_syncnet_offset_search_known_answer(weights_file, monkeypatch, d, expected_offset, kept):
    path, _ = weights_file
    cfg = SyncConfig()
    scorer = build_sync_scorer(cfg, path)  # real loader
    monkeypatch.setattr(scorer, "embed", _KnownShift(d))
    frames, audio = _av(8)  # content is ignored by the replaced embedding
    r = scorer.score(frames, audio)
    assert r.method == "syncnet_v2" and r.offset_frames == expected_offset
    # Matching embeddings are ~0.3*sqrt(1024) apart, unrelated ones ~sqrt(2*1024).
    assert r.min_distance < 15 and r.confidence > 20
    assert (sync_reject_reason(r, cfg) is None) is kept
    if not kept:
        assert "offset" in sync_reject_reason(r, cfg)


def test_syncnet_confidence_is_median_minus_min(weights_file, monkeypatch):
    path, _ = weights_file
    scorer = build_sync_scorer(SyncConfig(search_frames=5), path)
    ks = _KnownShift(1, n=20)
    monkeypatch.setattr(scorer, "embed", ks)
    r = scorer.score(*_av(8))
    # Reference: the original algorithm written out with numpy.
    v, a = ks.video.numpy(), ks.audio.numpy()
    a_pad = np.pad(a, ((5, 5), (0, 0)))
    mean_d = np.array([np.mean([np.linalg.norm(v[i] - a_pad[i + j] + 1e-6) for i in range(20)]) for j in range(11)])
    assert r.offset_frames == 5 - int(np.argmin(mean_d)) == -1
    assert r.min_distance == pytest.approx(mean_d.min(), rel=1e-4)
    assert r.confidence == pytest.approx(np.median(mean_d) - mean_d.min(), rel=1e-4)


def test_syncnet_low_confidence_is_rejected(weights_file, monkeypatch):
    path, _ = weights_file
    cfg = SyncConfig()
    scorer = build_sync_scorer(cfg, path)
    g = torch.Generator().manual_seed(3)
    noise = (torch.randn(40, 1024, generator=g), torch.randn(40, 1024, generator=g))
    monkeypatch.setattr(scorer, "embed", lambda f, a: noise)  # unrelated audio/video
    r = scorer.score(*_av(8))
    assert r.confidence < cfg.min_confidence_syncnet
    assert "confidence" in sync_reject_reason(r, cfg)


def test_syncnet_short_clips(loaded):
    scorer = loaded
    frames, audio = _av(5)
    r = scorer.score(frames, audio)  # 5 frames: no complete window as in the original
    assert not r.valid and "too short" in r.note
    assert sync_reject_reason(r, SyncConfig()).startswith("sync not measurable (syncnet_v2)")
    frames, audio = _av(25)  # 1 s: 20 windows < 31 shifts, still scored
    r = scorer.score(frames, audio)
    assert r.valid and r.n_windows == 20 and "short clip" in r.note


def test_syncnet_resamples_to_25fps_and_16khz(loaded, monkeypatch):
    seen = {}

    def fake_embed(frames, audio):
        seen["frames"], seen["audio"] = frames, audio
        return _KnownShift(0, n=10)(frames, audio)

    monkeypatch.setattr(loaded, "embed", fake_embed)
    rng = np.random.default_rng(0)
    frames = np.arange(40, dtype=np.uint8)[:, None, None, None].repeat(8, 1).repeat(8, 2).repeat(3, 3)
    audio = rng.standard_normal(48000 * 40 // 50).astype(np.float32)  # 0.8 s at 48 kHz
    r = loaded.score(frames, audio, fps=50.0, sample_rate=48000)
    assert r.offset_frames == 0 and r.valid
    assert len(seen["frames"]) == 20 and list(seen["frames"][:3, 0, 0, 0]) == [0, 2, 4]
    assert len(seen["audio"]) == 12800


@pytest.mark.gpu
def test_syncnet_on_cuda_matches_cpu(weights_file, loaded):
    frames, audio = _av(12)
    gpu = build_sync_scorer(SyncConfig(device="cuda"), weights_file[0])
    assert next(gpu.model.parameters()).is_cuda
    v_gpu, a_gpu = gpu.embed(frames, audio)
    v_cpu, a_cpu = loaded.embed(frames, audio)
    assert v_gpu.device.type == "cpu"  # embeddings come back on the CPU
    torch.testing.assert_close(v_gpu, v_cpu, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(a_gpu, a_cpu, rtol=1e-2, atol=1e-2)
    r_gpu, r_cpu = gpu.score(frames, audio), loaded.score(frames, audio)
    assert r_gpu.offset_frames == r_cpu.offset_frames


def test_loader_hints_for_common_wrong_files(tmp_path):
    """A saved error page, a cut-off download and the face detector from the same script."""
    html = tmp_path / "html.model"
    html.write_text("<!DOCTYPE html><html><body>404</body></html>")
    with pytest.raises(sn.SyncNetWeightsError, match="HTML/XML page: the download failed"):
        sn.load_syncnet_v2(html)
    full = tmp_path / "full.model"
    torch.save(random_official_state_dict(), full)
    cut = tmp_path / "cut.model"
    cut.write_bytes(full.read_bytes()[: 1 << 20])
    with pytest.raises(sn.SyncNetWeightsError, match="truncated download"):
        sn.load_syncnet_v2(cut)
    sfd = tmp_path / "sfd_face.pth"
    torch.save({"conv1_1.weight": torch.zeros(64, 3, 3, 3), "fc7.bias": torch.zeros(1024)}, sfd)
    with pytest.raises(sn.SyncNetWeightsError, match="S3FD face detector"):
        sn.load_syncnet_v2(sfd)
    assert 54_000_000 < sn.OFFICIAL_TENSOR_BYTES < 55_000_000  # 13.6 M float32 parameters + BN statistics


def test_weights_come_from_argument_config_or_environment(weights_file, monkeypatch):
    from avf_data.stages.sync import ENV_WEIGHTS, MotionEnvelopeScorer, resolve_weights

    path = str(weights_file[0])
    cfg = SyncConfig(weights="/from/config.model")
    env = {ENV_WEIGHTS: "/from/env.model"}
    assert resolve_weights("/cli.model", cfg, env) == ("/cli.model", "--syncnet-weights")
    assert resolve_weights(None, cfg, env) == ("/from/config.model", "config sync.weights")
    assert resolve_weights(None, SyncConfig(), env) == ("/from/env.model", ENV_WEIGHTS)
    assert resolve_weights(None, SyncConfig(), {}) == (None, "none")
    monkeypatch.setenv(ENV_WEIGHTS, path)
    assert build_sync_scorer(SyncConfig()).method == METHOD_SYNCNET
    monkeypatch.delenv(ENV_WEIGHTS)
    assert isinstance(build_sync_scorer(SyncConfig()), MotionEnvelopeScorer)
    assert build_sync_scorer(SyncConfig(weights=path)).method == METHOD_SYNCNET
