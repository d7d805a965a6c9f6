"""Issue 13's stall proof, bounded: no input at or over the caps pauses other streams.

`benchmarks/stall.py` runs `python app.py` (default settings) in front of the fake SGLang, keeps
a stream of tokens 10 ms apart flowing and `/health` asked every 20 ms, and sends each hostile
input in turn. Held here to the issue's bounds, a largest token gap and a slowest `/health`
under 50 ms, on the inputs that before the CPU budget froze the gateway for seconds (300,000
text parts took 8.6 s, 1,000,000 took 78 s, a 60 MB string 0.3 s) and on the worst ones the
caps still accept (a 20 MB image among them); and 40 transcriptions at once of a WAV whose
header declares 1 Hz to peak memory. The 40 concurrent 30 s transcriptions are measured by the
script, not held here: their pauses come from the CPU two cores share between 40 decodes.
About 20 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.load

ROOT = Path(__file__).resolve().parents[1]
BOUND_MS = 50.0
INPUTS = {
    "1,024 text parts, 1 MB of text (at the caps)": "200",
    "300,000 text parts (9 MB)": "400 too_many_elements",
    "1,000,000 text parts (31 MB)": "400 too_many_elements",
    "1,000 messages to fit to the template": "200",
    "a 1 MB string (at the text cap)": "200",
    "a 60 MB string": "400 None",
    "a 20 MB image as a data URL (at MAX_IMAGE_BYTES)": "200",
    "64 stop sequences, logit_bias of 16,000": "200",
    "128 tools of 20 parameters": "200",
}
# Finding 3's memory proof: 40 at once of a 1,242-byte WAV declaring 1 Hz took RSS from 506 MB
# to 2,072 MB (2,654 MB peak, a 768 ms gap, here before the fix). Forty requests arriving
# together are a burst of loop work (about 1 ms each on 2 cores), not one input that stalls it:
# their gap is usually 17-37 ms, once in five runs 122 ms, so it is held to a looser bound.
BURST = "40 transcriptions at once of a 1.2 kB WAV declaring 1 Hz (599 s)"
BURST_RSS_MB = 300.0
BURST_GAP_MS = 250.0


def test_hostile_inputs_leave_streams_and_health_under_50_ms(tmp_path: Path) -> None:
    out = tmp_path / "stall.json"
    only = [arg for name in [*INPUTS, BURST] for arg in ("--only", name)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/stall.py"), "--json", str(out), *only],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["input"]: row for row in json.loads(out.read_text())}
    assert set(rows) == {"(quiet: no hostile request)", *INPUTS, BURST}, done.stdout
    for name, status in INPUTS.items():
        row = rows[name]
        assert str(row["status"]) == status, row
        assert row["largest_gap_ms"] < BOUND_MS, (row, done.stdout)
        assert row["slowest_health_ms"] < BOUND_MS, (row, done.stdout)
    burst = rows[BURST]
    assert burst["status"] == "400x40", burst
    assert burst["peak_rss_mb"] < BURST_RSS_MB, burst
    assert burst["largest_gap_ms"] < BURST_GAP_MS, burst
