"""Section ``env``: what the run ran on (device, torch, CUDA, xformers, where the project came
from), so every table can be read against it."""

from __future__ import annotations

import platform
import sys

from common import append_record, guard_attention, run_section, section_args


def main() -> int:
    args = section_args(__doc__)

    def body() -> None:
        import numpy
        import torch

        import avf_data
        import avf_models
        from avf_models import attention

        rec = {
            "section": "env",
            "status": "ok",
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "cuda_available": torch.cuda.is_available(),
            "device": args.device,
            "dry_run": args.dry_run,
            "avf_data_from": str(avf_data.__file__),
            "avf_models_from": str(avf_models.__file__),
            "xformers_available": attention.xformers_available(),
        }
        if attention.xformers_available():
            import xformers

            rec["xformers"] = xformers.__version__
            if args.device.startswith("cuda"):  # importable is not enough: do its kernels run here?
                rec["xformers_probe"] = guard_attention(args.device) or "ok"
        for name in ("av", "soundfile", "cv2", "skimage", "scipy"):
            try:
                rec[name] = __import__(name).__version__
            except Exception as exc:  # recorded, not fatal: the section that needs it says more
                rec[name] = f"missing ({type(exc).__name__})"
        if torch.cuda.is_available() and args.device.startswith("cuda"):
            props = torch.cuda.get_device_properties(0)
            rec.update(
                gpu=torch.cuda.get_device_name(0),
                capability=f"{props.major}.{props.minor}",
                gpu_memory_gib=round(props.total_memory / 2**30, 1),
                cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(),
            )
        append_record(args.out, rec)

    return run_section("env", body, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
