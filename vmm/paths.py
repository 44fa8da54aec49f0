"""Where sources and build outputs live (the repository is the install: `pip install -e .`)."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNEL_SRC = ROOT / "kernel_asm"
LIBOS_SRC = ROOT / "libos"
BUILD = Path(os.environ.get("XOMB_BUILD_DIR", ROOT / "build"))
GEN = BUILD / "gen"
