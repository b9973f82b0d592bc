"""How responsive the JupyterLab side panel stays while 10,000+ result rows load and a job
updates: long tasks and long animation frames in Chromium's performance timeline.

    /path/to/venv/bin/python benchmarks/panel_frames.py [--files-per-night 1400] [--nights 5]
        [--step 2600] [--pause-ms 30] [--profile profile.cpuprofile]

Starts a real ``jupyter lab`` on a demo archive of 10,503 files (tests/browser_fixtures.py),
opens Debian's Chromium through Playwright with PerformanceObservers for ``longtask`` and
``long-animation-frame`` installed before the lab's scripts load, then: open the panel, launch a
staging job (its progress arrives on the event stream and updates the jobs list), search
``zen.*``, and wheel-scroll the results table until every row is loaded and the last one is
shown (the table fetches 200-row pages from the server's cursor as it scrolls). Prints the
longest task and frame and how many exceed 50 ms and 200 ms. No assertions: a measurement.
``--profile`` also records a CPU profile of the page (CDP ``Profiler``) over the same window.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.browser_fixtures import (
    PANEL,
    loaded_rows,
    open_lab_page,
    open_panel,
    panel_search,
    run_lab,
    scroll_results_to_end,
)

OBSERVE = """
window.__perf = {longtask: [], loaf: [], gaps: [], supported: PerformanceObserver.supportedEntryTypes};
for (const type of ['longtask', 'long-animation-frame']) {
  if (!PerformanceObserver.supportedEntryTypes.includes(type)) continue;
  new PerformanceObserver(list => {
    for (const e of list.getEntries()) {
      const rec = {start: e.startTime, duration: e.duration};
      if (type === 'long-animation-frame') {
        rec.blocking = e.blockingDuration;
        rec.render = e.renderStart ? e.startTime + e.duration - e.renderStart : 0;
        rec.scripts = (e.scripts || []).map(s => ({
          invoker: s.invoker, duration: s.duration, source: s.sourceURL,
          fn: s.sourceFunctionName, forced: s.forcedStyleAndLayoutDuration}));
        window.__perf.loaf.push(rec);
      } else {
        window.__perf.longtask.push(rec);
      }
    }
  }).observe({type, buffered: true});
}
// Frame gaps seen by requestAnimationFrame, as a cross-check.
let last = 0;
const tick = t => { if (last && window.__perf.measuring) window.__perf.gaps.push(t - last);
                    last = t; requestAnimationFrame(tick); };
requestAnimationFrame(tick);
"""


def summarise(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:<28} none recorded"
    return (f"{name:<28} n={len(values):<5} longest={max(values):7.1f} ms  "
            f">50ms={sum(v > 50 for v in values):<4} >200ms={sum(v > 200 for v in values)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files-per-night", type=int, default=1400)
    parser.add_argument("--nights", type=int, default=5)
    parser.add_argument("--step", type=int, default=2600, help="pixels per wheel step")
    parser.add_argument("--pause-ms", type=int, default=30, help="pause between wheel steps")
    parser.add_argument("--profile", help="write a CPU profile (.cpuprofile) of the window here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="panel-frames-") as tmp, \
            run_lab(Path(tmp), args.files_per_night, args.nights) as server, \
            open_lab_page(server, init_script=OBSERVE) as page:
        open_panel(page)
        page.wait_for_timeout(1000)  # the lab settles after start-up
        cdp = None
        if args.profile:
            cdp = page.context.new_cdp_session(page)
            cdp.send("Profiler.enable")
            cdp.send("Profiler.setSamplingInterval", {"interval": 200})
            cdp.send("Profiler.start")
        page.evaluate("() => { const p = window.__perf; p.longtask.length = 0;"
                      " p.loaf.length = 0; p.gaps.length = 0; p.measuring = true;"
                      " p.t0 = performance.now(); }")
        started = time.monotonic()
        job = server.api("stage", {"destination": "frames", "query": "zen.2457645.1*"})
        panel_search(page, "zen.*")
        page.locator(f"{PANEL} .jp-HeraStage-summary").get_by_text(" files loaded").wait_for()
        steps = scroll_results_to_end(page, args.step, args.pause_ms)
        elapsed = time.monotonic() - started
        perf = page.evaluate("() => { window.__perf.measuring = false; return window.__perf; }")
        # Only what ended inside the window (entries arrive after their frame ends, so one
        # from before the start can still be reported after the reset).
        for kind in ("longtask", "loaf"):
            perf[kind] = [e for e in perf[kind] if e["start"] + e["duration"] > perf["t0"]]
        job_state = server.api(f"jobs/{job['id']}")
        if cdp is not None:
            profile = cdp.send("Profiler.stop")["profile"]
            Path(args.profile).write_text(json.dumps(profile))
        rows = loaded_rows(page)

    print(f"Chromium entry types: {', '.join(perf['supported'])}")
    print(f"{rows[0] if rows else '?'} rows loaded by {steps} wheel steps of {args.step} px "
          f"in {elapsed:.1f} s; job {job['id']} {job_state['state']} "
          f"({job_state['files_done']}/{job_state['files_total']} files) meanwhile")
    print(summarise("long tasks (>=50 ms)", [e["duration"] for e in perf["longtask"]]))
    print(summarise("long animation frames", [e["duration"] for e in perf["loaf"]]))
    print(summarise("  their blocking time", [e["blocking"] for e in perf["loaf"]]))
    print(summarise("rAF frame gaps", perf["gaps"]))
    worst = sorted(perf["loaf"], key=lambda e: -e["duration"])[:5]
    for e in worst:
        scripts = sorted(e["scripts"], key=lambda s: -s["duration"])[:2]
        what = "; ".join(f"{s['invoker']} {s['duration']:.0f} ms"
                         f" (forced layout {s['forced'] or 0:.0f} ms)" for s in scripts)
        print(f"  frame at {e['start'] - perf['t0']:8.0f} ms: {e['duration']:.0f} ms,"
              f" render {e['render']:.0f} ms; {what or 'no script'}")
    if args.profile:
        print(f"CPU profile: {args.profile} (open in Chromium's DevTools, Performance panel)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
