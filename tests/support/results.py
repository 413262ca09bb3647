"""One recorder for the figures a run measures (docs/reliability.md quotes them): a JSON file of
sections, the newest run's per section, and one printed line per section (``pytest -s``)."""

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


class ResultsFile:
    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self.label = label  # printed before each line: which suite measured it

    def record(self, section: str, values: dict[str, Any], summary: str | None = None) -> None:
        """Replace ``section`` with ``values`` (stamped with the time); print ``summary`` or the values."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        data[section] = {**values, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.path.write_text(json.dumps(data, indent=2, sort_keys=True))
        print(f"\n[{self.label}] {section}: {summary or json.dumps(values, sort_keys=True)}")


ROBUSTNESS_RESULTS = ResultsFile(
    Path(os.environ.get("CITYCARD_ROBUSTNESS_RESULTS",
                        Path(tempfile.gettempdir()) / "citycard-robustness" / "last_results.json")),
    "robustness")
