"""`python -m bench.check bench/results/<date>-<db>.json`: the issue's targets, read from one run.

Prints a Markdown summary: flat with size (p99 and a worker's peak memory at the largest size
within 1.25x of the smallest; the p99s also from the side-by-side pass, `bench/flat.py`, when the
run has one), the ratios to nginx for the hot paths (cache on, cache off), and
search's p99 against an essay page's. Figures only: nothing here is a pass/fail test.
"""

import json
import sys
from pathlib import Path
from typing import Any

from bench import report
from bench.endpoints import EVERY_ESSAY

FLAT = 1.25
HOT = ("essay (random ids)", EVERY_ESSAY, "essay (one popular)", "/", "/feed.xml")
HOT_RATIO, NOT_MODIFIED_RATIO, UNCACHED_ESSAY_RATIO, SEARCH_P99 = 0.35, 0.5, 0.1, 10.0


def _rows(run: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["endpoint"], r["cache"]): r for r in run["rows"] if "absent" not in r}


def _mark(ok: bool) -> str:
    return "met" if ok else "**not met**"


def summary(doc: dict[str, Any]) -> list[str]:
    runs = doc["runs"]
    small, large = runs[0], runs[-1]
    a, b = _rows(small), _rows(large)
    lines = [
        f"### {doc['meta']['database']}: {small['size']:,} vs {large['size']:,} essays",
        "",
        f"| endpoint | cache | p99 ms at {small['size']:,} | p99 ms at {large['size']:,} "
        f"| growth | flat (<= {FLAT}x) |",
        "|---|---|---:|---:|---:|---|",
    ]
    flat = 0
    compared = 0
    smaller = [(run, _rows(run)) for run in runs[:-1]]
    for key, row in b.items():
        # An endpoint that only exists in larger archives (a sitemap chunk past the first
        # 5,000 ids) is compared with the smallest archive that has it, and says so.
        first, base = next(((run, rows[key]) for run, rows in smaller if key in rows), (None, {}))
        if first is None or "ratio" not in row:
            continue
        name = key[0]
        if first is not small:
            name += f" (vs {first['size']:,}: none at {small['size']:,})"
        compared += 1
        if not (row["requests_ok"] if "requests_ok" in row else row["rps"] > 0) or not (
            base["p99_ms"] and row["p99_ms"]
        ):
            # wrk saw no answer within the run (p99 0): no figure, so not flat.
            lines.append(f"| {name} | {key[1]} | {base['p99_ms']:.1f} | - | - | no answers |")
            continue
        growth = row["p99_ms"] / base["p99_ms"]
        flat += growth <= FLAT
        lines.append(
            f"| {name} | {key[1]} | {base['p99_ms']:.1f} | {row['p99_ms']:.1f} "
            f"| {growth:.2f} | {_mark(growth <= FLAT)} |"
        )
    side = doc.get("side_by_side")
    if side is not None:
        lines += ["", *_side_by_side(side, flat, compared)]
    mem_a = max((r["peak_worker_rss_mb"] for r in a.values()), default=0.0)
    mem_b = max((r["peak_worker_rss_mb"] for r in b.values()), default=0.0)
    growth = mem_b / mem_a if mem_a else float("inf")
    lines += [
        "",
        f"- p99 flat with size: {flat} of {compared} endpoint rows within {FLAT}x.",
        f"- Largest worker's peak RSS: {mem_a:.0f} MB at {small['size']:,}, {mem_b:.0f} MB at "
        f"{large['size']:,} ({growth:.2f}x): {_mark(growth <= FLAT)}.",
    ]
    for run in runs:
        rows = _rows(run)
        lines.append(f"- Ratios to nginx at {run['size']:,} essays:")
        if run.get("calibration"):
            lines.append(
                f"  - calibration, a bare ASGI callable under stock uvicorn: "
                f"{run['calibration']['ratio']:.3f} (the issue's machine: about 0.65)"
            )
        for name in HOT:
            for cache in ("on", "off"):
                hot = rows.get((name, cache))
                if hot is None:
                    continue
                target = HOT_RATIO if cache == "on" else UNCACHED_ESSAY_RATIO
                applies = cache == "on" or name.startswith("essay")
                verdict = f" (target {target}: {_mark(hot['ratio'] >= target)})" if applies else ""
                one_file = hot.get("one_file_ratio")  # runs from the twenty-third session on
                peer = " of nginx serving the same pages" if one_file is not None else ""
                line = f"  - {name}, cache {cache}: {hot['ratio']:.3f}{peer}{verdict}"
                if one_file is not None:
                    line += f"; {one_file:.3f} of nginx serving the one popular page"
                lines.append(line)
        for (name, cache), row in rows.items():
            if "304" in name and cache == "on":
                ok = row["ratio"] >= NOT_MODIFIED_RATIO
                line = (
                    f"  - {name}: {row['ratio']:.3f} of nginx's own 304 "
                    f"(target {NOT_MODIFIED_RATIO}: {_mark(ok)})"
                )
                if row.get("page_ratio") is not None:  # earlier runs lack it
                    ok = row["page_ratio"] >= NOT_MODIFIED_RATIO
                    line += f"; {row['page_ratio']:.3f} of nginx serving the page, as `peer.sh"
                    line += f" URL` measures it (target {NOT_MODIFIED_RATIO}: {_mark(ok)})"
                lines.append(line)
    essay = b.get(("essay (random ids)", "on"))
    for (name, cache), row in b.items():
        if name.startswith("/search") and cache == "on" and essay and row["p99_ms"]:
            times = row["p99_ms"] / essay["p99_ms"]
            lines.append(
                f"- {name} p99 at {large['size']:,}: {times:.1f}x the essay page's "
                f"(target <= {SEARCH_P99}x: {_mark(times <= SEARCH_P99)})"
            )
    return lines


def _side_by_side(side: dict[str, Any], sequential: int, compared: int) -> list[str]:
    """The flatness verdict from the side-by-side pass (`bench/flat.py`): both sizes measured
    within seconds of each other, the median p99 of several rounds each."""
    small, large = report.side_labels(side)
    what = "the smallest archive served twice, a control" if side.get("control") else "sizes"
    lines = [
        f"Side by side ({what}; {side['rounds']} rounds, median p99; the table above compares "
        f"sizes measured one after the other, {sequential} of {compared} flat):",
        "",
        f"| endpoint | cache | median p99 ms at {small} | at {large} | growth "
        f"| flat (<= {FLAT}x) |",
        "|---|---|---:|---:|---:|---|",
    ]
    flat = 0
    for r in side["rows"]:
        a, b = r["median_p99_ms"][small], r["median_p99_ms"][large]
        ok = r["growth"] is not None and r["growth"] <= FLAT
        flat += ok
        lines.append(
            f"| {r['endpoint']} | {r['cache']} | {a:.2f} | {b:.2f} "
            f"| {r['growth'] or 0:.2f} | {_mark(ok)} |"
        )
    verdict = (
        "p99 within 1.25x, one server against its twin"
        if side.get("control")
        else ("p99 flat with size, side by side")
    )
    lines += ["", f"- {verdict}: {flat} of {len(side['rows'])} rows."]
    return lines


def main(argv: list[str] | None = None) -> None:
    for name in argv if argv is not None else sys.argv[1:]:
        print("\n".join(summary(json.loads(Path(name).read_text()))))
        print()


if __name__ == "__main__":
    main()
