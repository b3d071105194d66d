"""Where the tests find the real data set: `DRIP_DATASET_CSV`, or ../shared/data beside the
repository (never copied into it)."""

from __future__ import annotations

import os
from pathlib import Path

CSV = Path(os.environ.get("DRIP_DATASET_CSV") or Path(__file__).resolve().parents[2]
           / "shared" / "data" / "medical-appointments-no-show.csv")
