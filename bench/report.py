"""The results table: Markdown for people, JSON for checks (ratios, flatness with size)."""

import argparse
import json
import os
import platform
from datetime import datetime
from pathlib import Path
from typing import Any


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def write(
    stem: Path,
    kind: str,
    started: datetime,
    args: argparse.Namespace,
    runs: list[dict[str, Any]],
    side_by_side: dict[str, Any] | None = None,
) -> None:
    meta = {
        "date": started.isoformat(timespec="seconds"),
        "database": kind,
        "workers": args.workers,
        "seconds": args.seconds,
        "wrk": "-t2 -c32 --latency (ingest: -t1 -c1 and -t2 -c8)",
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "command": "python -m bench "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in (("sizes", args.sizes), ("seconds", args.seconds), ("cache", args.cache))
        ),
    }
    doc: dict[str, Any] = {"meta": meta, "runs": runs}
    if side_by_side is not None:
        doc["side_by_side"] = side_by_side
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")

    smallest = (
        {(r["endpoint"], r["cache"]): r.get("p99_ms") for r in runs[0]["rows"]} if runs else {}
    )
    lines = [
        f"# Benchmark {meta['date']} ({kind}, {args.workers} workers, {meta['cores']} cores)",
        "",
        f"`{meta['command']}`; wrk {meta['wrk']}, {args.seconds} s per measurement.",
        "ratio = the endpoint's requests/s over nginx serving the same bytes as a static file, "
        "measured in the same run (a 304 row: over nginx answering 304 to its own ETag; a "
        "random-essay row: over nginx serving every essay's page at its own path, drawn by the "
        "same wrk script, and its notes give the ratio to nginx serving the one popular page; "
        "the every-essay row is measured after one pass that reads each page once, on both "
        "sides). "
        "p99 x = p99 over the same endpoint's p99 at the smallest size.",
        "",
    ]
    for run in runs:
        built = run.get("build_seconds")
        rate = f", built at {run['size'] / built:.0f} essays/s" if built else " (reused)"
        lines += [f"## {run['size']:,} essays{rate}", ""]
        if run.get("calibration"):
            c = run["calibration"]
            lines += [
                f"Calibration: a bare ASGI callable under stock uvicorn ({args.workers} workers) "
                f"serving the popular essay's bytes: {c['rps']:.0f} req/s, **{c['ratio']:.3f}** "
                f"of nginx ({c['static_rps']:.0f} req/s); the issue's machine: about 0.65.",
                "",
            ]
        lines += [
            "| endpoint | cache | req/s | p50 ms | p99 ms | p99 x | ratio to nginx | nginx req/s "
            "| peak RSS MB (all / one worker) | notes |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in run["rows"]:
            if "absent" in r:
                lines.append(f"| {r['endpoint']} | {r['cache']} | | | | | | | | {r['absent']} |")
                continue
            base = smallest.get((r["endpoint"], r["cache"]))
            growth = r["p99_ms"] / base if base else None
            notes = [r["errors"]] if r.get("errors") else []
            if "page_ratio" in r:  # a 304 row: also against nginx serving the page (peer.sh)
                notes.insert(
                    0,
                    f"{r['page_ratio']:.3f} of nginx serving the page "
                    f"({r['page_static_rps']:.0f} req/s), as `peer.sh URL` measures it",
                )
            if "one_file_ratio" in r:  # a random-essay row: also against one page
                notes.insert(
                    0,
                    f"{r['one_file_ratio']:.3f} of nginx serving the one popular page "
                    f"({r['one_file_static_rps']:.0f} req/s)",
                )
            if "reader_rps" in r:
                notes.insert(
                    0, f"readers {r['reader_rps']:.0f} req/s, p99 {r['reader_p99_ms']:.1f} ms"
                )
            lines.append(
                f"| {r['endpoint']} | {r['cache']} | {r['rps']:.0f} | {r['p50_ms']:.2f} "
                f"| {r['p99_ms']:.2f} | {_fmt(growth, '.2f')} | {_fmt(r.get('ratio'), '.3f')} "
                f"| {_fmt(r.get('static_rps'), '.0f')} "
                f"| {r['peak_rss_mb']:.0f} / {r['peak_worker_rss_mb']:.0f} | {'; '.join(notes)} |"
            )
        lines.append("")
    if side_by_side is not None:
        lines += _side_by_side(side_by_side)
    stem.with_suffix(".md").write_text("\n".join(lines))


def side_labels(flat: dict[str, Any]) -> tuple[str, str]:
    """The two sides of a side-by-side pass, as its rows name them."""
    labels = flat.get("labels") or [str(flat["small"]), str(flat["large"])]
    return labels[0], labels[1]


def _side_by_side(flat: dict[str, Any]) -> list[str]:
    small, large = side_labels(flat)
    title = (
        f"## Control: the {flat['small']:,}-essay archive served twice, side by side"
        if flat.get("control")
        else f"## Flat with size, side by side: {flat['small']:,} and {flat['large']:,} essays"
    )
    lines = [
        title,
        "",
        f"Both served at once; each endpoint loaded on one and then the other, "
        f"{flat['rounds']} rounds of {flat['seconds']} s each (one, the other, then the other, "
        "one, ...); the median p99 of each (`bench/flat.py`).",
        "",
        f"| endpoint | cache | p99 ms at {small} (each round) "
        f"| p99 ms at {large} (each round) | median growth |",
        "|---|---|---|---|---:|",
    ]
    for r in flat["rows"]:
        rounds = {k: ", ".join(f"{v:.2f}" for v in r["p99_ms"][k]) for k in (small, large)}
        lines.append(
            f"| {r['endpoint']} | {r['cache']} | {r['median_p99_ms'][small]:.2f} ({rounds[small]}) "
            f"| {r['median_p99_ms'][large]:.2f} ({rounds[large]}) | {_fmt(r['growth'], '.2f')} |"
        )
    return [*lines, ""]
