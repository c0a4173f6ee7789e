"""Write the built-in demo videos into a folder (the same ones `avf-data build --demo` uses).

uv run python tools/make_demo_clips.py demo-inputs/
"""

import sys

from avf_data.demo import make_demo_inputs

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for name, path in make_demo_inputs(sys.argv[1]).items():
        print(f"{name:14s} {path}")
