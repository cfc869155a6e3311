"""Small JSON files other processes read while they are being replaced: written whole or not at all.

A reader (the supervisor reading a worker's result, `status` reading the fleet's published state) must never
see half a file, so each is written to a temporary file beside it and renamed over the old one. A failure
leaves no temporary file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, payload: Any, *, fsync: bool = False) -> None:
    """Write ``payload`` as JSON at ``path`` by rename; ``fsync`` when the file must survive a power loss."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-")  # a dot-file: no scan takes it
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
