"""How a benchmark run reads: the tables per scenario, the goals check and the media figures.

Owns turning the result dict of `benchmarks/run.py` (the same one saved as JSON) into text: one
table per scenario (direct vs gateway, with the added milliseconds or the ratio), the sweep (one
row per number of streams, loaded and held) and the soak (RSS over time) on the gateway path, the
media benchmarks' headline figures, and the goals with their measured value and PASS or MISS.
`goals()` is also stored in the JSON.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Row = tuple[str, str, str | None]  # label, figure key, comparison: "added", "ratio" or None
SATURATED_PCT = 90.0  # the load generator's core is this busy: figures may measure the client

CPU_REQ: Row = ("gateway CPU ms / request", "gateway_cpu_ms_per_request", None)
CPU_TOK: Row = ("gateway CPU ms / 1k tokens", "gateway_cpu_ms_per_1k_tokens", None)
CPU_PCT: Row = ("gateway CPU % of a core", "gateway_cpu_pct", None)
RSS: Row = ("gateway peak RSS MB", "gateway_peak_rss_mb", None)
RPS: Row = ("requests / s", "requests_per_s", "ratio")
STREAMS: Row = ("streams / s", "requests_per_s", "ratio")
TOKENS: Row = ("tokens / s", "tokens_per_s", "ratio")
IDEAL: Row = ("% of ideal tokens / s", "tokens_pct_of_ideal", None)
TAIL: list[Row] = [
    ("complete answers, whole run", "completed", None),
    ("incomplete", "incomplete", None),
    ("errors", "errors", None),
    ("client core busy %", "client_core_busy_pct", None),
    ("gateway core busy %", "gateway_core_busy_pct", None),
]
OTHER_LOAD_PCT = 10.0  # the gateway's core this much busier than the gateway: something else ran


def _lat(name: str, key: str, q: str) -> Row:
    return (f"{name} p{q} ms", f"{key}_p{q.replace('.', '')}_ms", "added")


SLOW_STREAMS: list[Row] = [
    TOKENS,
    IDEAL,
    _lat("token gap", "gap", "50"),
    _lat("token gap", "gap", "99"),
    _lat("token gap", "gap", "99.9"),
    ("stall % (gap > 2x delay)", "stall_pct", None),
    _lat("TTFT", "ttft", "50"),
    CPU_TOK,
    CPU_PCT,
    RSS,
]
ROWS: dict[str, list[Row]] = {
    "a": [_lat("latency", "latency", q) for q in ("50", "90", "99")] + [RPS, CPU_REQ],
    "b": [
        RPS,
        _lat("latency", "latency", "50"),
        _lat("latency", "latency", "99"),
        CPU_REQ,
        CPU_PCT,
    ],
    "c": [
        _lat("TTFT", "ttft", "50"),
        _lat("TTFT", "ttft", "99"),
        ("total p50 ms", "latency_p50_ms", "added"),
        STREAMS,
        CPU_TOK,
    ],
    "d": [TOKENS, STREAMS, _lat("TTFT", "ttft", "50"), CPU_TOK, CPU_PCT],
    "e": SLOW_STREAMS,
    "e1000": [("streams sent", "sent", None), *SLOW_STREAMS],
}


SWEEP_LOAD: list[tuple[str, str]] = [  # column header, figure key in the point's "load"
    ("tokens/s", "tokens_per_s"),
    ("% ideal", "tokens_pct_of_ideal"),
    ("gap p99 ms", "gap_p99_ms"),
    ("TTFT p50 ms", "ttft_p50_ms"),
    ("gw CPU %", "gateway_cpu_pct"),
    ("CPU ms/1k tok", "gateway_cpu_ms_per_1k_tokens"),
    ("RSS MB", "gateway_rss_end_mb"),
    ("kB/stream", "rss_per_stream_kb"),
    ("incomplete", "incomplete"),
    ("errors", "errors"),
    ("client core %", "client_core_busy_pct"),
]
SWEEP_HELD: list[tuple[str, str]] = [  # column header, figure key in the point's "held"
    ("open at backend", "held_open_at_backend"),
    ("tokens/s", "tokens_per_s"),
    ("gw CPU %", "gateway_cpu_pct"),
    ("idle RSS MB", "idle_rss_mb"),
    ("RSS MB", "gateway_rss_end_mb"),
    ("kB/stream", "rss_per_stream_kb"),
    ("incomplete", "incomplete"),
    ("errors", "errors"),
]
SOAK_ROWS: list[tuple[str, str]] = [
    ("RSS at the start MB", "rss_start_mb"),
    ("RSS at 25 % MB", "rss_25pct_mb"),
    ("RSS at 50 % MB", "rss_50pct_mb"),
    ("RSS at 75 % MB", "rss_75pct_mb"),
    ("RSS at the end MB", "rss_end_mb"),
    ("RSS max MB", "rss_max_mb"),
    ("growth, second half MB", "growth_second_half_mb"),
    ("growth, second half MB / min", "growth_second_half_mb_per_min"),
    ("RSS samples", "rss_samples"),
    ("tokens delivered", "tokens"),
    ("tokens / s", "tokens_per_s"),
    ("% of ideal tokens / s", "tokens_pct_of_ideal"),
    ("token gap p99 ms", "gap_p99_ms"),
    ("gateway CPU % of a core", "gateway_cpu_pct"),
    ("gateway CPU ms / 1k tokens", "gateway_cpu_ms_per_1k_tokens"),
    ("incomplete", "incomplete"),
    ("errors", "errors"),
    ("client core busy %", "client_core_busy_pct"),
]


# -- formatting -------------------------------------------------------------------------------


def number(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return (
        f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"
    )


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned first column, the others right-aligned."""
    widths = [max(len(line[i]) for line in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def _compare(kind: str | None, direct: object, gateway: object) -> str:
    if kind is None or not isinstance(direct, int | float) or not isinstance(gateway, int | float):
        return ""
    if kind == "added":
        return f"{gateway - direct:+.3f} ms"
    return f"{gateway / direct:.2f}x" if direct else ""


def _cells(kind: str | None, direct: object, gateway: object) -> list[str]:
    return [number(direct), number(gateway), _compare(kind, direct, gateway)]


def scenario_table(key: str, entry: dict[str, Any]) -> str:
    direct, gateway = entry.get("direct", {}), entry.get("gateway", {})
    rows = [
        [label, *_cells(kind, direct.get(figure), gateway.get(figure))]
        for label, figure, kind in ROWS[key] + TAIL
    ]
    return f"{key}: {entry['title']}\n" + table(
        ["", "direct", "gateway", "gateway vs direct"], rows
    )


def sweep_tables(sweep: dict[str, Any]) -> str:
    """Two tables, one row per N: N streams of e's load, then N streams held open."""
    load, held = sweep["params"]["load"], sweep["params"]["held"]
    load_title = (
        f"sweep: N streams x {load['tokens']} tokens at {load['delay_ms']:g} ms/token, gateway "
        f"path, a fresh gateway per N ({load['warmup']:g} s warm-up, {load['duration']:g} s "
        "window);\nRSS at the window's end, kB/stream = (that RSS - the gateway's idle RSS) / N"
    )
    held_title = (
        f"sweep, held: N streams open at {held['delay_ms']:g} ms/token ({held['tokens']} tokens) "
        "on the same gateway, just before the load above;\nmeasured from "
        f"{held['warmup']:g} s to {held['warmup'] + held['duration']:g} s after they start, "
        "before any ends"
    )
    return "\n\n".join(
        [
            f"{load_title}\n{_per_n_table(sweep['points'], 'load', SWEEP_LOAD)}",
            f"{held_title}\n{_per_n_table(sweep['points'], 'held', SWEEP_HELD)}",
        ]
    )


def _per_n_table(points: list[dict[str, Any]], part: str, columns: list[tuple[str, str]]) -> str:
    rows = [
        [number(point["streams"]), *(number(point[part].get(key)) for _, key in columns)]
        for point in points
    ]
    return table(["N", *(header for header, _ in columns)], rows)


def soak_table(soak: dict[str, Any]) -> str:
    figures = soak["figures"]
    rows = [[label, number(figures.get(key))] for label, key in SOAK_ROWS]
    return (
        f"soak: {soak['title']}, gateway path, a fresh gateway, RSS every "
        f"{soak['params']['interval']:g} s from the window's start\n" + table(["", "gateway"], rows)
    )


# -- goals ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """One goal: where its figure is and what it must satisfy."""

    name: str  # "<scenario>: ..." when it comes from a scenario
    target: str
    measure: Callable[[dict[str, Any]], float | None]  # from the whole result
    ok: Callable[[float], bool]
    unit: str

    @property
    def scenario(self) -> str | None:
        return self.name.split(":", 1)[0] if ":" in self.name else None


def _at_most(limit: float) -> Callable[[float], bool]:
    return lambda value: value <= limit


def _at_least(limit: float) -> Callable[[float], bool]:
    return lambda value: value >= limit


def _below(limit: float) -> Callable[[float], bool]:
    return lambda value: value < limit


def _figure(key: str, figure: str, path: str = "gateway") -> Callable[[dict[str, Any]], Any]:
    return lambda result: result.get("scenarios", {}).get(key, {}).get(path, {}).get(figure)


def _added(key: str, figure: str) -> Callable[[dict[str, Any]], float | None]:
    def measure(result: dict[str, Any]) -> float | None:
        direct, gateway = _figure(key, figure, "direct")(result), _figure(key, figure)(result)
        return None if direct is None or gateway is None else float(gateway) - float(direct)

    return measure


def _all_delivered(result: dict[str, Any]) -> float | None:
    """Streams that came back whole, as % of those sent (100 only with no error either)."""
    figures = result.get("scenarios", {}).get("e1000", {}).get("gateway")
    if not figures or not figures["sent"]:
        return None
    share = 100 * float(figures["completed"]) / float(figures["sent"])
    return min(share, 99.99) if figures["errors"] or figures["incomplete"] else share


def _gateway(figure: str) -> Callable[[dict[str, Any]], Any]:
    return lambda result: (result.get("gateway") or {}).get(figure)


def _soak(figure: str) -> Callable[[dict[str, Any]], Any]:
    return lambda result: result.get("soak", {}).get("figures", {}).get(figure)


GOALS = [
    Goal("a: added latency p50", "<= 1.0 ms", _added("a", "latency_p50_ms"), _at_most(1), " ms"),
    Goal("b: requests / s", ">= 2,000", _figure("b", "requests_per_s"), _at_least(2000), ""),
    Goal("c: added TTFT p50", "<= 1.0 ms", _added("c", "ttft_p50_ms"), _at_most(1), " ms"),
    Goal(
        "e: % of ideal tokens / s",
        ">= 98 %",
        _figure("e", "tokens_pct_of_ideal"),
        _at_least(98),
        " %",
    ),
    Goal("e: token gap p99", "< 30 ms", _figure("e", "gap_p99_ms"), _below(30), " ms"),
    Goal(
        "e: gateway CPU / 1,000 tokens",
        "<= 40 ms",
        _figure("e", "gateway_cpu_ms_per_1k_tokens"),
        _at_most(40),
        " ms",
    ),
    Goal("e1000: every token delivered", "100 % of streams", _all_delivered, _at_least(100), " %"),
    Goal(
        "soak: memory flat under load, growth over the 2nd half",
        "< 2 MB",
        _soak("growth_second_half_mb"),
        _below(2),
        " MB",
    ),
    Goal("idle RSS", "< 80 MB", _gateway("idle_rss_mb"), _below(80), " MB"),
    Goal("start-up", "< 1.5 s", _gateway("startup_s"), _below(1.5), " s"),
]


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    ran = {*result.get("scenarios", {}), *(key for key in ("sweep", "soak") if key in result)}
    checked = []
    for goal in GOALS:
        value = goal.measure(result)
        if value is None:
            status = "NOT RUN" if goal.scenario not in ran else "NO DATA"
        else:
            status = "PASS" if goal.ok(value) else "MISS"
        checked.append(
            {"goal": goal.name, "target": goal.target, "measured": value, "unit": goal.unit}
            | {"status": status}
        )
    return checked


def _with_unit(value: float | None, unit: str) -> str:
    return "-" if value is None else number(value) + unit


def goals_table(checked: list[dict[str, Any]]) -> str:
    rows = [
        [goal["goal"], goal["target"], _with_unit(goal["measured"], goal["unit"]), goal["status"]]
        for goal in checked
    ]
    return "goals\n" + table(["goal", "target", "measured", ""], rows)


# -- media ------------------------------------------------------------------------------------

_PREPARE = re.compile(r"^\s+(?P<label>\S.*?)\s+[\d.]+ MB\s+(?P<ms>[\d.]+) ms", re.M)
_CACHED = re.compile(r"^\s+(?P<label>\S.*?)\s+[\d.]+ MB URL\s+(?P<ms>[\d.]+) ms", re.M)
_STALL = re.compile(r"^\s+processes .*worst stall per round (?P<worst>[\d., ]+) ms", re.M)
_DECODE = re.compile(r"^(?P<label>\S.*?)\s+(?P<ms>[\d.]+)ms\s+[\d.]+ms", re.M)

MEDIA_GOALS: dict[str, list[tuple[str, str, float]]] = {  # headline key, goal text, limit (ms)
    "images": [
        ("jpeg_12mp_ms", "12 MP JPEG prepared < 60 ms", 60.0),
        ("cache_hit_ms", "cache hit (12 MP JPEG) < 1 ms", 1.0),
        ("worst_stall_ms", "worst loop stall (process pool) < 20 ms", 20.0),
    ],
    "audio": [
        ("mp3_60s_ms", "60 s MP3 ready < 150 ms", 150.0),
        ("webm_60s_ms", "60 s WebM/Opus ready < 150 ms", 150.0),
        ("m4a_60s_ms", "60 s M4A/AAC ready < 150 ms", 150.0),
    ],
}


def _first(pattern: re.Pattern[str], text: str, label_start: str) -> float | None:
    for match in pattern.finditer(text):
        if match["label"].startswith(label_start):
            return float(match["ms"])
    return None


def media_headline(name: str, text: str) -> dict[str, float | None]:
    """The headline figures in the printed output of bench_images.py or bench_audio.py."""
    if name == "images":
        prepare = text.split("cache hit", 1)[0]
        worst = [
            float(v) for m in _STALL.finditer(text) for v in m["worst"].split(",") if v.strip()
        ]
        return {
            "jpeg_12mp_ms": _first(_PREPARE, prepare, "12 MP JPEG"),
            "cache_hit_ms": _first(_CACHED, text, "12 MP JPEG"),
            "worst_stall_ms": max(worst) if worst else None,
        }
    return {
        "mp3_60s_ms": _first(_DECODE, text, "60 s MP3"),
        "webm_60s_ms": _first(_DECODE, text, "60 s WebM"),
        "m4a_60s_ms": _first(_DECODE, text, "60 s M4A"),
        "m4a_10min_ms": _first(_DECODE, text, "10 min M4A"),
    }


def media_table(media: dict[str, Any]) -> str:
    rows = []
    for name, run in media.items():
        for key, text, limit in MEDIA_GOALS.get(name, []):
            value = run["headline"].get(key)
            status = "-" if value is None else "PASS" if value < limit else "MISS"
            rows.append([f"{name}: {text}", number(value), status])
        if run["returncode"] != 0:
            rows.append([f"{name}: exit status", str(run["returncode"]), "FAILED"])
    return "media (headline figures; their full output follows)\n" + table(
        ["figure", "ms", ""], rows
    )


# -- the whole report -------------------------------------------------------------------------


def render(result: dict[str, Any]) -> str:
    parts = [_header(result)]
    parts += [scenario_table(key, entry) for key, entry in result.get("scenarios", {}).items()]
    if result.get("sweep"):
        parts.append(sweep_tables(result["sweep"]))
    if result.get("soak"):
        parts.append(soak_table(result["soak"]))
    if result.get("memory"):
        memory = result["memory"]
        rows = [[label, number(memory.get(key))] for key, label in MEMORY_ROWS]
        parts.append("memory (gateway)\n" + table(["", "MB"], rows))
    if result.get("media"):
        parts.append(media_table(result["media"]))
        parts += [
            f"$ {run['command']}\n{run['output'].rstrip()}" for run in result["media"].values()
        ]
    parts.append(goals_table(result.get("goals", [])))
    parts += _notes(result.get("scenarios", {}) | _gateway_only(result))
    return "\n\n".join(parts) + "\n"


def _gateway_only(result: dict[str, Any]) -> dict[str, Any]:
    """The sweep's and the soak's measurements, shaped like scenarios for `_notes`."""
    entries: dict[str, Any] = {}
    for point in result.get("sweep", {}).get("points", []):
        entries[f"sweep {point['streams']}"] = {"gateway": point["load"]}
        entries[f"sweep held {point['streams']}"] = {"gateway": point["held"]}
    if result.get("soak"):
        entries["soak"] = {"gateway": result["soak"]["figures"]}
    return entries


def _notes(scenarios: dict[str, Any]) -> list[str]:
    """Warnings about the conditions of the measurement."""
    busy, shared = [], []
    for key, entry in scenarios.items():
        direct, gateway = entry.get("direct", {}), entry.get("gateway", {})
        # On the direct path, the client and the backend keep their core busy by design.
        if (gateway.get("client_core_busy_pct") or 0) > SATURATED_PCT:
            busy.append(key)
        idle_core = direct.get("gateway_core_busy_pct") or 0  # nothing of ours runs there
        beyond = (gateway.get("gateway_core_busy_pct") or 0) - (gateway.get("gateway_cpu_pct") or 0)
        if max(idle_core, beyond) > OTHER_LOAD_PCT:
            shared.append(key)
    notes = []
    if busy:
        notes.append(
            f"note: the load generator's core was over {SATURATED_PCT:.0f} % busy in "
            f"{', '.join(busy)}: there the figures may measure the client, not the gateway."
        )
    if shared:
        notes.append(
            f"note: other processes used the gateway's core in {', '.join(shared)} (its busy "
            "time exceeded the gateway's CPU): those figures are disturbed; rerun on a quiet box."
        )
    return notes


MEMORY_ROWS = [
    ("idle_rss_mb", "RSS idle, before load"),
    ("rss_after_mb", "RSS after the run"),
    ("growth_mb", "growth"),
    ("hwm_mb", "peak (VmHWM)"),
]


def _header(result: dict[str, Any]) -> str:
    meta, gateway = result.get("meta", {}), result.get("gateway") or {}
    lines = [
        f"benchmark run {meta.get('started_utc', '')}"
        + (" (quick: tiny windows, not comparable)" if meta.get("quick") else ""),
        f"pinning: {meta.get('pinning') or 'none'}",
    ]
    warning = (meta.get("open_files") or {}).get("warning")
    if warning:
        lines.append(f"warning: {warning}")
    if gateway:
        lines.append(
            f"gateway: {gateway['command']}: start-up {number(gateway['startup_s'])} s, "
            f"idle RSS {number(gateway['idle_rss_mb'])} MB"
        )
    return "\n".join(lines)
