"""Orcasound hydrophone nodes and clip names.

Unlabeled spectrograms are named `<node>_<unix seconds>.png` (e.g. `orcasoundlab_1594154118.png`).
`/predict` reports the node's place name as `location` and the start time as an HTTP date.

- A node missing from `LOCATIONS` is reported with its node name as location.
- A stem that is not `<node>_<unix seconds>` is still scored, with `location` and `timestamp` null.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from datetime import datetime, timezone
from email.utils import format_datetime

# The one table of node names → locations (Orcasound's live hydrophones).
LOCATIONS = MappingProxyType({
    "orcasoundlab": "Haro Strait",
    "port_townsend": "Port Townsend",
    "bush_point": "Bush Point",
    "sunset_bay": "Sunset Bay",
    "andrews_bay": "Andrews Bay",
    "north_sjc": "North San Juan Channel",
    "mast_center": "Mast Center",
    "point_robinson": "Point Robinson",
})

CLIP_SECONDS = 3

_STEM = re.compile(r"^(?P<node>[A-Za-z][A-Za-z0-9_\-]*?)_(?P<seconds>\d{1,11})$")


def parse_stem(stem: str) -> tuple[str | None, int | None]:
    """`orcasoundlab_1594154118` → ('orcasoundlab', 1594154118); anything else → (None, None)."""
    match = _STEM.match(stem)
    if not match:
        return None, None
    seconds = int(match["seconds"])
    try:
        datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None, None
    return match["node"], seconds


def location_for(node: str | None) -> str | None:
    if node is None:
        return None
    return LOCATIONS.get(node, node)


def http_date(seconds: int | None) -> str | None:
    """Unix seconds → 'Tue, 07 Jul 2020 15:35:18 GMT' (what Flask wrote for a datetime)."""
    if seconds is None:
        return None
    return format_datetime(datetime.fromtimestamp(seconds, timezone.utc), usegmt=True)


def describe_clip(stem: str) -> dict:
    """The clip fields of a /predict item except audio_url and predicted_value."""
    node, seconds = parse_stem(stem)
    return {"duration": CLIP_SECONDS, "location": location_for(node), "timestamp": http_date(seconds)}
