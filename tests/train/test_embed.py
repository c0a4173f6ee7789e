"""``avf-train embed``: a clip's embedding equals what the model's forward computes on its test
views, the files keep the shards' keys, a rerun skips finished shards, and a video file gives the
vector of the same clip read from a shard."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from avf_train.cli import main
from avf_train.embed import INDEX, load_embeddings

ONE_CPU = ["--num-workers", "0", "--precision", "fp32", "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fine-tuned tiny checkpoint as an exported dict (no training needed for these checks)."""
    from avf_models import create_model

    torch.manual_seed(0)
    model = create_model("avfmae_pp_tiny", stage="finetune", num_classes=3)
    path = tmp_path_factory.mktemp("embed_ckpt") / "tiny.pt"
    torch.save({"format": 1, "stage": "finetune", "model_name": "avfmae_pp_tiny", "model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def embedded(shards: dict[str, str], checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("embed") / "feats"
    argv = ["embed", "--checkpoint", str(checkpoint), "--data", shards["labelled"], "--out", str(out)]
    assert main([*argv, "--batch-size", "3", *ONE_CPU]) == 0
    return out


def _shard_keys(pattern: str) -> list[list[str]]:
    from avf_data.shards import iter_raw_samples
    from avf_train.data import resolve_shards

    return [[s["__key__"] for s in iter_raw_samples([shard])] for shard in resolve_shards(pattern)]


def test_files_keep_the_shard_keys_and_index(embedded: Path, shards: dict[str, str]) -> None:
    index = json.loads((embedded / INDEX).read_text())
    assert [f["file"] for f in index["files"]] == ["embeddings-000000.npz", "embeddings-000001.npz"]
    assert index["clips"] == 8 and index["dims"] == {"video": 64, "audio": 64, "fused": 128}
    assert index["test_segments"] * index["test_crops"] == 4
    for entry, keys in zip(index["files"], _shard_keys(shards["labelled"]), strict=True):
        saved = np.load(embedded / entry["file"])
        assert list(saved["keys"]) == keys and str(saved["source"]) == entry["source"]
        assert saved["fused"].shape == (4, 128) and saved["video"].shape == saved["audio"].shape == (4, 64)
        assert saved["label"].tolist() == [int(k[-3:]) % 3 for k in keys]  # the fixture's labels
        assert saved["targets"].shape == (4, 2)
    assert not list(embedded.glob("*.tmp"))
    every = load_embeddings(embedded)
    assert len(every["keys"]) == 8 and every["fused"].shape == (8, 128)


def test_a_clip_embedding_is_what_the_forward_computes(embedded: Path, shards: dict[str, str], checkpoint) -> None:
    """head(fused) equals the mean of the model's logits over the clip's test views (the head is
    linear), views cut from the decoded sample by the test transform."""
    from avf_data.shards import decode_sample, iter_raw_samples
    from avf_train.data import resolve_shards
    from avf_train.modeling import load_predictor
    from avf_train.transforms import make_view

    predictor = load_predictor(checkpoint, "cpu")
    raw = next(iter_raw_samples(resolve_shards(shards["labelled"])[1:]))
    clip = decode_sample(raw)
    views = [
        make_view(clip.frames, clip.fps, clip.audio, clip.sample_rate, predictor.views, None, view=v)
        for v in range(predictor.views.num_views)
    ]
    video, audio = torch.stack([v["video"] for v in views]), torch.stack([v["audio"] for v in views])
    logits = predictor(video, audio)
    saved = np.load(embedded / "embeddings-000001.npz")
    row = list(saved["keys"]).index(raw["__key__"])
    model = predictor.model
    with torch.no_grad():
        from_fused = model.head_activation(model.head(torch.from_numpy(saved["fused"][row])))
        emb = model.embed(video, audio)
    assert torch.allclose(from_fused, logits.mean(dim=0), atol=1e-5)
    for name in ("fused", "video", "audio"):
        assert torch.allclose(torch.from_numpy(saved[name][row]), emb[name].mean(dim=0), atol=1e-5)


def test_rerun_skips_finished_shards(
    embedded: Path, shards: dict[str, str], checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["embed", "--checkpoint", str(checkpoint), "--data", shards["labelled"], "--out", str(embedded), *ONE_CPU]
    first = embedded / "embeddings-000000.npz"
    stamp = first.stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "skipping 2 finished shards" in out and "shard 1/" not in out
    assert "8 clips from 2 file(s)" in out and first.stat().st_mtime_ns == stamp
    second = embedded / "embeddings-000001.npz"
    before = np.load(second)["fused"]
    second.unlink()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "skipping 1 finished shard " in out and "shard 1/1" in out
    assert np.allclose(np.load(second)["fused"], before, atol=1e-6)
    assert json.loads((embedded / INDEX).read_text())["clips"] == 8


def test_loader_workers_and_bf16_give_the_same_clips(
    embedded: Path, shards: dict[str, str], checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "workers"
    flags = ["--num-workers", "2", "--precision", "bf16", "--device", "cpu", "--batch-size", "2"]
    assert (
        main(["embed", "--checkpoint", str(checkpoint), "--data", shards["labelled"], "--out", str(out), *flags]) == 0
    )
    fp32, bf16 = load_embeddings(embedded), load_embeddings(out)
    order = [list(bf16["keys"]).index(k) for k in fp32["keys"]]  # workers interleave the clips
    assert sorted(bf16["keys"]) == sorted(fp32["keys"])
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(fp32["fused"]), torch.from_numpy(bf16["fused"][order]))
    assert (cos > 0.99).all()


def _remux(raw: dict, path: Path) -> None:
    """The shard sample as one video file: its H.264 stream copied, its 16 kHz PCM beside it."""
    import av

    from avf_data.shards import decode_audio

    wav, rate = decode_audio(raw["wav"])
    with av.open(io.BytesIO(raw["mp4"]), format="mp4") as src, av.open(str(path), "w", format="matroska") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        aout = dst.add_stream("pcm_s16le", rate=rate, layout="mono")
        for packet in src.demux(vin):
            if packet.dts is not None:
                packet.stream = vout
                dst.mux(packet)
        frame = av.AudioFrame.from_ndarray(
            np.round(wav * 32768).clip(-32768, 32767).astype(np.int16)[None], format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = rate, 0
        for packet in [*aout.encode(frame), *aout.encode(None)]:
            dst.mux(packet)


def test_a_video_file_embeds_as_the_same_clip_in_a_shard(
    embedded: Path, shards: dict[str, str], checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from avf_data.shards import iter_raw_samples
    from avf_train.data import resolve_shards

    raw = next(iter_raw_samples(resolve_shards(shards["labelled"])))
    video = tmp_path / f"{raw['__key__']}.mkv"
    _remux(raw, video)
    out = tmp_path / "video"
    argv = ["embed", "--checkpoint", str(checkpoint), "--video", str(video), "--out", str(out), *ONE_CPU]
    assert main(argv) == 0
    assert "1 clips from 1 file(s)" in capsys.readouterr().out
    mine = np.load(out / "embeddings-000000.npz")
    shard = np.load(embedded / "embeddings-000000.npz")
    assert list(mine["keys"]) == [raw["__key__"]] and "label" not in mine
    row = list(shard["keys"]).index(raw["__key__"])
    for name in ("fused", "video", "audio"):
        assert np.allclose(mine[name][0], shard[name][row], atol=1e-5), name
    assert main(argv) == 0 and "skipping 1 finished video" in capsys.readouterr().out


def test_user_errors(shards: dict[str, str], checkpoint: Path, tmp_path: Path, capsys) -> None:
    base = ["embed", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"), *ONE_CPU[:2], "--device", "cpu"]
    cases = [
        ([], "--data SHARDS or --video FILE"),
        (["--data", shards["labelled"], "--video", str(checkpoint)], "one of the two"),
        (["--video", str(tmp_path / "none.mp4")], "does not exist"),
        (["--video", str(checkpoint)], "cannot read video"),
        (["--data", shards["labelled"], "--precision", "fp16"], "embed runs in bf16 or fp32"),
        (["--data", shards["labelled"], "--set", "optim.lr=1"], "embed takes --set data.FIELD=VALUE only"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("avf-train: error:") and message in err and len(err.strip().splitlines()) == 1, err


def test_vectors_made_otherwise_are_not_mixed_into_a_folder(
    embedded: Path, shards: dict[str, str], checkpoint: Path, tmp_path: Path, capsys
) -> None:
    """Another checkpoint, precision or view setting into the same --out is refused, not mixed in."""
    other = tmp_path / "other.pt"
    os.link(checkpoint, other)
    argv = ["embed", "--data", shards["labelled"], "--out", str(embedded), "--num-workers", "0", "--device", "cpu"]
    cases = [
        (["--checkpoint", str(other)], "another checkpoint"),
        (["--checkpoint", str(checkpoint), "--precision", "bf16"], "another precision fp32 (now bf16)"),
        (["--checkpoint", str(checkpoint), "--segments", "1"], "another views 2 segments"),
    ]
    for extra, message in cases:
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "use another --out" in err, err
