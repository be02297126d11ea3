"""``adamml predict --live SOURCE``: one line (or JSON object) per segment of a stream.

SOURCE is an ``rtsp://`` / ``http(s)://`` URL, a camera (``/dev/video0``), a file still being
written (MPEG-TS, MKV or fragmented MP4, followed to its end) or ``-`` (a container on
standard input). It first says whether the model keeps up with the segment span (the
compute per segment measured at start on its own networks) or the span it would keep up
with; then each segment prints as soon as it is decided: its time span, which modalities
ran, GFLOPs, its top classes, the running top classes, latency and lag. Ctrl-C ends the
run with its summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings

from adamml.data.stream import StreamError
from adamml.errors import AdamMLError
from adamml.inference.live import display_problem, draw_timeline, events_timeline, run_live
from adamml.inference.windows import plot_timeline
from adamml.models.build import model_from_checkpoint
from adamml.models.thresholds import parse_budget


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", help="rtsp:// or http(s):// URL, /dev/videoN, a growing file, or -")
    parser.add_argument("--checkpoint", required=True, help="a trained AdaMML model (e.g. runs/x/adamml/best.pt)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line: each segment, then the summary")
    parser.add_argument("--mode", nargs="+", default=["carry"], metavar="MODE",
                        help="carry (the policy's state runs through the stream) or 'window N' (it restarts every "
                        "N segments, as predict --window; N defaults to the model's evaluation segments)")
    parser.add_argument("--running", type=int, default=10, metavar="N",
                        help="carry mode: the running top classes over the last N segments")
    parser.add_argument("--max-lag", type=float, default=None, metavar="S",
                        help="drop segments the model would reach more than S seconds behind the stream")
    parser.add_argument("--budget", metavar="B",
                        help="hold the mean cost over the last minute at B: 0.5 or 50%% of weighted fusion's "
                        "GFLOPs, or 1.2G GFLOPs per segment, by moving the policy's thresholds online")
    parser.add_argument("--record", metavar="PNG", help="write the timeline (top classes, modalities per segment) at the end")
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pace", type=float, default=None, metavar="X",
                        help="replay a finished file at X times real time (1: as if it were live)")
    parser.add_argument("--follow-idle", type=float, default=3.0, metavar="S",
                        help="a file has ended once it has not grown for S seconds")
    parser.add_argument("--format", default=None, help="the container format when it cannot be probed (mpegts, matroska)")
    add_stream_options(parser)


def add_stream_options(group) -> None:
    """Options of a live run that ``predict --live`` shares (an argparse parser or group)."""
    group.add_argument("--show", action="store_true",
                       help="draw the live timeline in a window (needs a display and an OpenCV with a GUI)")
    group.add_argument("--span", type=float, default=None, metavar="S",
                       help="seconds per segment (default: the model's own span); a longer span lets a slow "
                       "machine keep up, its clip placed at the segment's centre")
    group.add_argument("--expect", nargs="+", default=None, metavar="MOD=R",
                       help="the share of segments each modality is expected to run on, for the keep-up "
                       "statement at start (e.g. rgb=0.5; default: what --budget allows, else all)")


def _expect(words: list[str] | None) -> dict[str, float] | None:
    if not words:
        return None
    rates = {}
    for word in words:
        name, _, value = word.partition("=")
        try:
            rates[name] = float(value)
        except ValueError:
            raise AdamMLError(f"--expect {word}: expected MODALITY=RATE, e.g. rgb=0.5") from None
    return rates


def _mode(words: list[str]) -> tuple[str, int | None]:
    if words[0] == "carry" and len(words) == 1:
        return "carry", None
    if words[0] == "window" and len(words) <= 2:
        try:
            return "window", int(words[1]) if len(words) == 2 else None
        except ValueError:
            pass
    raise AdamMLError(f"--mode {' '.join(words)}: expected 'carry' or 'window N' (N segments)")


def format_event(event) -> str:
    """A terminal line: time span, what ran, GFLOPs, top classes, running top, latency, lag."""
    ran = "+".join(m for m, d in event.decisions.items() if d) or "-"
    best = ", ".join(f"{n} {100 * p:.0f}%" for n, p in event.top)
    running = ", ".join(f"{n} {100 * p:.0f}%" for n, p in event.running)
    budget = f"  budget {100 * event.budget['gap']:+.1f}%" if event.budget else ""
    dropped = f"  dropped {event.dropped_frames} frames" if event.dropped_frames else ""
    return (f"{_clock(event.start_s)}-{_clock(event.end_s)}  [{ran}]  {event.gflops:.4f} GFLOPs  {best}  "
            f"| running: {running}  | latency {1000 * event.latency_s:.0f} ms, lag {event.lag_s:+.2f} s{budget}{dropped}")


def format_summary(summary) -> str:
    rates = ", ".join(f"{m} {100 * r:.0f}%" for m, r in summary.selection.items())
    text = (f"{summary.source}: {summary.segments} segments of {summary.segment_s:.2f} s ({summary.duration_s:.1f} s); "
            f"ran {rates or 'nothing'}; {summary.gflops_per_segment:.4f} GFLOPs per segment; "
            f"latency median {1000 * summary.latency_median_s:.0f} ms, p95 {1000 * summary.latency_p95_s:.0f} ms; "
            f"lag max {summary.lag_max_s:.2f} s; dropped {summary.dropped_frames} frames "
            f"({summary.dropped_segments} segments); compute {100 * summary.realtime_fraction:.0f}% of real time")
    if summary.budget:
        text += f"; budget {summary.budget['mean_gflops']:.4f} of {summary.budget['target_gflops']:.4f} GFLOPs ({100 * summary.budget['gap']:+.1f}%)"
    return text + ("; interrupted" if summary.interrupted else "")


def format_plan(plan) -> str:
    return f"plan: {plan.describe()}"


def run(args: argparse.Namespace) -> int:
    show = getattr(args, "show", False)
    if show:  # before anything is loaded or read
        problem = display_problem()
        if problem:
            raise AdamMLError(f"--show: {problem}; --record timeline.png writes the timeline at the end instead")
    mode, window = _mode(args.mode)
    budget = parse_budget(args.budget) if args.budget else None
    expect = _expect(getattr(args, "expect", None))
    bundle = model_from_checkpoint(args.checkpoint)
    live = run_live(bundle, args.source, mode=mode, window=window, running=args.running, max_lag_s=args.max_lag,
                    budget=budget, topk=args.topk, device=args.device, pace=args.pace,
                    follow_idle_s=args.follow_idle, format=args.format, span_s=getattr(args, "span", None),
                    expect=expect)
    said = False

    def say_plan() -> None:
        nonlocal said
        if not said and live.plan is not None and live.plan.segment_s is not None:
            said = True
            print(json.dumps({"plan": live.plan.to_json()}) if args.json else format_plan(live.plan), flush=True)

    say_plan()  # at start, when the config fixes the frame rate; else with the first segment
    recorded, shown = [], []
    error = None
    try:
        with warnings.catch_warnings():
            if args.json:
                warnings.simplefilter("ignore")
            for event in live:
                say_plan()
                if args.record:
                    recorded.append(dataclasses.replace(event, scores=None))  # the plot shows the running scores
                print(json.dumps(event.to_json()) if args.json else format_event(event), flush=True)
                if show and not _show(shown, event, bundle):
                    live.close()
                    break
    except KeyboardInterrupt:
        live.close()
        if live.summary is not None:
            live.summary.interrupted = True
    except StreamError as exc:
        error = " ".join(str(exc).split())
    if shown:
        import cv2  # OpenCV only when a window is asked for

        cv2.destroyAllWindows()
    summary = live.summary
    if summary is not None:
        print(json.dumps({"summary": summary.to_json()}) if args.json else format_summary(summary), flush=True)
    if args.record and recorded:

        path = plot_timeline(events_timeline(recorded, args.source, bundle.modalities), bundle.class_names, args.record)
        if not args.json:
            print(f"timeline plot: {path}")
    if error:
        print(f"adamml predict --live: {error} ({summary.segments if summary else 0} segments kept)", file=sys.stderr)
        return 1
    return 0


def _show(shown: list, event, bundle, keep: int = 60) -> bool:
    """Draw the timeline in its window; False once the window is closed or q is pressed."""
    import cv2  # OpenCV only when a window is asked for

    shown.append(event)
    del shown[:-keep]
    title = "adamml live (q: stop)"
    cv2.imshow(title, draw_timeline(shown, bundle.class_names, list(bundle.modalities), segments=keep))
    key = cv2.waitKey(1) & 0xFF
    return key != ord("q") and cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) >= 1


def _clock(seconds: float) -> str:
    minutes, s = divmod(seconds, 60)
    return f"{int(minutes)}:{s:05.2f}" if minutes < 60 else f"{int(minutes // 60)}:{int(minutes % 60):02d}:{s:05.2f}"
