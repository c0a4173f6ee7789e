"""Bad inputs become reject rows with clear reasons; the run goes on."""

from __future__ import annotations

import os

import numpy as np


def read_jsonl(path) -> list[dict]:
    import json as _json
    from pathlib import Path as _Path

    return [_json.loads(x) for x in _Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def test_bad_inputs_are_rejected_and_run_goes_on(tmp_path, canvas):
    from avf_data.build import build
    from avf_data.demo import write_av

    src = tmp_path / "in"
    src.mkdir()
    frames = np.repeat(canvas((160, 96), head=60)[None], 10, axis=0)
    tone = (0.2 * np.sin(np.arange(8000) / 16000 * 2 * np.pi * 200)).astype(np.float32)
    write_av(src / "no_audio.mp4", frames, None)
    (src / "empty.mp4").write_bytes(b"")
    (src / "corrupt.mp4").write_bytes(os.urandom(2048))
    raw = os.fsencode(str(src)) + b"/caf\xe9.mp4"  # Latin-1 name: not valid UTF-8
    write_av(src / "tmp.mp4", frames, tone)
    os.rename(src / "tmp.mp4", raw)
    (src / "notes.txt").write_text("ignored: not a video\n")  # folders only pick video files
    (src / "cover.jpg").write_bytes(b"x")
    (src / "folder.mkv").mkdir()  # a folder named like a video: searched as a folder, counted
    (src / ".hidden.mp4").write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text("# inputs\nmissing.mp4\n")
    out = tmp_path / "out"
    stats = build([str(src), str(listing)], out, workers=1, progress=False)
    rejects = read_jsonl(out / "rejects.jsonl")
    by_name = {os.path.basename(r["source"]): r for r in rejects}
    codes = {name: r["code"] for name, r in by_name.items()}
    assert codes == {
        "no_audio.mp4": "decode.no_audio",
        "empty.mp4": "decode.empty",
        "corrupt.mp4": "decode.corrupt",
        "missing.mp4": "decode.missing",
        os.path.basename(os.fsdecode(raw)).encode("utf-8", "backslashreplace").decode(): "decode.path",
    }
    assert str(tmp_path) not in by_name["corrupt.mp4"]["reason"]  # the row names its source; no path in the text
    bad_name = [r for r in rejects if "caf" in r["source"]]
    assert bad_name and "UTF-8" in bad_name[0]["reason"] and "\\udce9" in bad_name[0]["source"]
    skipped = stats["run"]["files_skipped"]
    assert skipped == {".txt": 1, ".jpg": 1, "hidden": 1, "folder named like a video": 1}
    assert stats["run"]["inputs_skipped"][0].startswith("skipped in the input folders: 2 files that are not videos")
    assert all(r["stage"] == "decode" for r in rejects)
    assert stats["inputs"] == 5 and stats["inputs_rejected"] == 5 and stats["clips"] == 0
    assert (out / "report.md").exists() and (out / "manifest.jsonl").read_text() == ""
