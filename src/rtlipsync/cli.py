"""The ``rtlipsync`` command.

Bad input ends the command with one line on stderr (``error: ...``) and exit status 2; no
partial output is left behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rtlipsync import __version__
from rtlipsync.errors import InputError
from rtlipsync.logs import configure_logging, native_logs_hidden

if TYPE_CHECKING:
    from rtlipsync.config import Settings

log = logging.getLogger("rtlipsync")


def _avatar_prepare(args: argparse.Namespace) -> None:
    from rtlipsync.face.avatar import PrepareOptions, prepare_avatar

    options = PrepareOptions(
        bbox_shift=args.bbox_shift,
        extra_margin=args.extra_margin,
        max_size=args.max_size,
        max_seconds=args.max_seconds,
    )
    m = prepare_avatar(args.name, args.source, options, force=args.force, progress=not args.quiet)
    if args.engine != "cpu":  # the engine's own assets (MuseTalk: crop latents)
        from rtlipsync.face.avatar import load_avatar

        _engine(args).prepare(load_avatar(args.name))
    missing = len(m["faces_missing"])
    lo, hi = m["bbox_shift_range"]
    print(
        f"avatar {m['name']}: {m['frame_count']} frames at {m['fps']} fps, "
        f"{m['width']}x{m['height']}, {missing} without a face; "
        f"bbox_shift range [{lo}, {hi}]"
    )
    if m.get("footage"):
        print(m["footage"]["message"])


def _avatar_bake(args: argparse.Namespace) -> None:
    from rtlipsync.engines.musetalk.bank import bake
    from rtlipsync.face.avatar import load_avatar

    if args.engine != "musetalk":
        raise InputError("only the musetalk engine bakes a bank: --engine musetalk")
    avatar = load_avatar(args.name)
    path = bake(avatar, _engine(args), progress=not args.quiet)
    print(f"baked {path}: the CPU engine now serves {args.name} with MuseTalk mouths")


def _engine(args: argparse.Namespace, audio: str = "stream"):  # noqa: ANN202
    from rtlipsync.engines import make_engine

    return make_engine(args.engine, args.musetalk_version, args.device, args.compile, audio)


def _engine_flags(parser: argparse.ArgumentParser, engine: str | None = "cpu") -> None:
    parser.add_argument(
        "--engine", choices=["cpu", "musetalk"], default=engine, help="lip-sync engine (cpu)"
    )
    parser.add_argument(
        "--musetalk-version", choices=["v15", "v10"], default="v15", help="MuseTalk's weights"
    )
    parser.add_argument(
        "--device", default="auto", help="MuseTalk: auto (a GPU if torch sees one), cpu, cuda"
    )
    parser.add_argument("--compile", action="store_true", help="MuseTalk: torch.compile the UNet")


def _avatar_list(args: argparse.Namespace) -> None:
    from rtlipsync.face.avatar import list_avatars

    avatars = list_avatars()
    if not avatars:
        print("no avatars yet: rtlipsync avatar prepare NAME IMAGE_OR_VIDEO")
    for m in avatars:
        kind = "still" if m.get("still") else f"{m['frame_count']} frames"
        print(f"{m['name']:<20} {kind:<12} {m['width']}x{m['height']}  {m['source']['path']}")


def _render(args: argparse.Namespace) -> None:
    from rtlipsync.render import render, render_inference_config

    if args.inference_config is not None:
        if args.audio or args.text:
            raise InputError("--inference-config names its own audio: drop --audio/--text")
        results = render_inference_config(args.inference_config, args.output, not args.quiet)
    else:
        results = [
            render(
                args.avatar,
                args.output,
                audio=args.audio,
                text=args.text,
                voice=args.voice,
                emotion=args.emotion,
                progress=not args.quiet,
                preset=args.preset,
                # Offline: MuseTalk's audio features as whole official segments.
                engine=_engine(args, audio="segment"),
            )
        ]
    for r in results:
        print(
            f"wrote {r.path} ({r.frames} frames, {r.video_seconds:.2f} s video, "
            f"{r.audio_seconds:.2f} s audio)"
        )


def cap_malloc_arenas(count: int = 2) -> bool:
    """Let glibc's malloc keep at most ``count`` arenas, as ``MALLOC_ARENA_MAX`` would.

    By default it gives threads up to eight arenas per core; the per-frame worker threads of
    many sessions then spread short-lived frames over all of them, and the server's memory
    crept upward by ~5 % over ten minutes of four speaking sessions. False where the C
    library is not glibc (nothing changes there).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    return bool(mallopt(-8, count))  # M_ARENA_MAX


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    cap_malloc_arenas()

    from rtlipsync.compose import server_config
    from rtlipsync.config import load_settings
    from rtlipsync.engines import make_engine
    from rtlipsync.face.avatar import load_avatar
    from rtlipsync.server import create_app

    settings = load_settings(
        args.config,
        host=args.host,
        port=args.port,
        avatar=args.avatar,
        max_sessions=args.max_sessions,
        mode=args.mode,
        engine=args.engine,
    )
    load_avatar(settings.avatar)  # prepare the default avatar now, or fail with a clear line
    if args.cluster:
        _serve_gateway(args, settings)
        return
    config = server_config(settings, warm_workers=True)  # (a wrong setting is said first)
    engine = make_engine(settings.engine, args.musetalk_version, args.device, args.compile)
    config = dataclasses.replace(config, engine=lambda: engine)  # one, shared: weights load once
    log.info(
        "chat mode: %s",
        f"{config.llm.model} at {config.llm.base_url or 'OpenAI'}"
        if config.llm
        else "no LLM configured",
    )
    realtime = config.realtime
    log.info(
        "realtime mode: %s",
        f"{realtime.model} at {realtime.url}" if realtime else "no realtime service configured",
    )
    log.info("lip-sync engine: %s", engine.name)
    app = create_app(config)
    log.info(
        "serving on http://%s:%d/ with avatar %s", settings.host, settings.port, settings.avatar
    )
    # WebSocket pings find a client whose network vanished within ~10 s.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        ws_ping_interval=5.0,
        ws_ping_timeout=5.0,
    )


def _serve_gateway(args: argparse.Namespace, settings: Settings) -> None:
    """``serve --cluster``: this process is the gateway; sessions live on Ray workers."""
    import uvicorn

    from rtlipsync.compose import server_config

    try:
        from rtlipsync.cluster.gateway import Cluster, WorkerSpec, create_gateway
    except ImportError as exc:
        raise InputError(
            f'--cluster needs Ray ({exc.name} is missing): pip install -e ".[cluster]"'
        ) from None
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, not {args.workers}")
    if args.queue_wait < 0:
        raise InputError(f"--queue-wait is 0 or more seconds, not {args.queue_wait:g}")
    budget = args.worker_fps_budget
    sessions = None if budget else args.worker_sessions or settings.max_sessions
    try:
        specs = [
            WorkerSpec(f"worker-{k + 1}", sessions, fps_budget=budget, gpus=args.worker_gpus)
            for k in range(args.workers)
        ]
        capacity = specs[0].capacity
    except ValueError as exc:
        raise InputError(f"{exc} (--worker-sessions, --worker-fps-budget)") from None
    local = args.cluster == "auto"
    cluster = Cluster(
        specs,
        address=args.cluster,
        config=str(args.config) if args.config else None,
        engine=settings.engine,
        worker_host="127.0.0.1" if local else "0.0.0.0",
        queue_wait=args.queue_wait,
    )
    log.info(
        "gateway on http://%s:%d/ for %d session workers of %d sessions on Ray at %s",
        settings.host,
        settings.port,
        len(specs),
        capacity,
        args.cluster,
    )
    # Each relayed request would be logged by the relay's client too: the access line is kept.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # The gateway is what clients reach: it has a server's gates, set as the server's are.
    app = create_gateway(cluster, gates=server_config(settings))
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None)


def _eval_sync(args: argparse.Namespace) -> None:
    from rtlipsync.eval.sync import GOALS, measure_sync

    report = measure_sync(args.video, args.audio, progress=not args.quiet)
    if args.json:
        print(json.dumps({**report.as_dict(), "meets": report.verdicts()}))
        return
    verdicts = report.verdicts()

    def line(label: str, value: str, goal: str, key: str) -> None:
        verdict = "" if key not in verdicts else ("ok" if verdicts[key] else "below goal")
        print(f"{label:<16} {value:<9} ({goal})  {verdict}")

    line(
        "correlation", f"{report.correlation:.3f}", f"goal >= {GOALS['correlation']}", "correlation"
    )
    lag_goal = (
        f"goal {-GOALS['max_lead_ms']}..+{GOALS['max_late_ms']} ms; + = video late, "
        "- = the mouth leads, as real ones do"
    )
    line("lag", f"{report.lag_ms:+.0f} ms", lag_goal, "lag")
    if report.silence_motion is None or report.silence_open is None:
        print("silence          not measured: no lasting silence (or speech) in the audio")
    else:
        motion_goal = f"goal <= {GOALS['silence_motion']}"
        line("silence motion", f"{report.silence_motion:.3f}", motion_goal, "silence_motion")
        open_goal = f"goal <= {GOALS['silence_open']}"
        line("silence opening", f"{report.silence_open:.3f}", open_goal, "silence_open")
    print(
        f"frames           {report.frames} ({report.frames_with_face} with a face, "
        f"{report.speech_frames} speech, {report.silence_frames} silence)"
    )


def _eval_lips(args: argparse.Namespace) -> None:
    from rtlipsync.eval.lips import (
        GOALS,
        ClipReport,
        footage_truth,
        ground_truth,
        measure_lips,
        medians,
    )

    progress = not args.quiet
    if args.video is not None:
        if len(args.truth) != 1:
            raise InputError("with a VIDEO to measure, give exactly one --truth clip")
        if args.footage:
            raise InputError("--footage runs the whole method: give no VIDEO with it")
        reports = [ClipReport(args.video.name, measure_lips(args.video, args.truth[0], progress))]
    else:
        engine = _engine(args)
        if args.reverse and not args.footage:
            raise InputError("--reverse splits the footage measure: give it with --footage")
        if args.footage:
            reports = [
                footage_truth(t, engine, args.keep, progress=progress, reverse=args.reverse)
                for t in args.truth
            ]
        else:
            reports = [ground_truth(t, engine, args.keep, progress=progress) for t in args.truth]
    summary = medians(reports)
    if args.json:
        print(json.dumps({
            "clips": {c.clip: c.report.as_dict() for c in reports},
            "median": summary,
            "goals": GOALS,
        }))  # fmt: skip
        return
    print(f"{'clip':<28} {'r':>6} {'closed':>7} {'best r':>7} {'lag ms':>7} {'frames':>7}")
    for c in reports:
        r = c.report
        agree = "-" if r.closed_agreement is None else f"{r.closed_agreement:.2f}"
        print(
            f"{c.clip[:28]:<28} {r.r:6.2f} {agree:>7} {r.best_r:7.2f} "
            f"{r.best_lag_ms:+7.0f} {r.frames:7d}"
        )
    agree = summary["closed_agreement"]
    print(
        f"{'median':<28} {summary['r']:6.2f} {'-' if agree is None else f'{agree:.2f}':>7} "
        f"{summary['best_r']:7.2f}"
    )
    print(
        f"goals: r >= {GOALS['r']} at lag 0, closed agreement >= {GOALS['closed_agreement']} "
        "(lag: + means the render is late)"
    )


def _eval_bilabials(args: argparse.Namespace) -> None:
    from rtlipsync.eval.bilabials import GOALS, SENTENCES, measure_bilabials
    from rtlipsync.face.avatar import load_avatar

    sentences = list(SENTENCES)
    if args.sentences is not None:
        try:
            lines = args.sentences.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InputError(f"cannot read sentences from {args.sentences}: {exc}") from exc
        sentences = [line.strip() for line in lines if line.strip()]
        if not sentences:
            raise InputError(f"{args.sentences} holds no sentences (one per line)")
    reports = measure_bilabials(
        load_avatar(args.avatar), _engine(args), sentences, args.voice, not args.quiet
    )
    if args.json:
        print(json.dumps({mode: r.as_dict() for mode, r in reports.items()}))
        return
    for mode, report in reports.items():
        print(f"from {mode}:")
        for s in report.sentences:
            share = "-" if s.share is None else f"{s.share:.0%}"
            print(f"  {s.shut:3d}/{s.total:<3d} {share:>5}  {s.text}")
        print(
            f"  all: {report.shut}/{report.total} = {report.share:.0%} shut "
            f"(median per sentence {report.median:.0%}; goal >= {GOALS[mode]:.0%})"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtlipsync", description="A real-time talking face.")
    parser.add_argument("--version", action="version", version=f"rtlipsync {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the real-time server (the browser page at /)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8010)")
    serve.add_argument("--avatar", help="avatar for sessions that name none (default: built-in)")
    serve.add_argument("--max-sessions", type=int, help="sessions at once (default 8)")
    serve.add_argument(
        "--mode",
        choices=["repeat", "chat", "realtime"],
        help="who answers in sessions that don't choose (default chat)",
    )
    serve.add_argument("--config", type=Path, help="YAML settings file")
    _engine_flags(serve, engine=None)  # None: the settings file's choice (default cpu)
    cluster = serve.add_argument_group("cluster (the cluster extra: sessions on Ray workers)")
    cluster.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="serve as the gateway of session workers on Ray: auto (start a local Ray) or "
        "ray://HOST:PORT",
    )
    cluster.add_argument("--workers", type=int, default=1, help="session workers (default 1)")
    cluster.add_argument(
        "--worker-sessions", type=int, help="sessions per worker (default: --max-sessions)"
    )
    cluster.add_argument(
        "--worker-gpus",
        type=float,
        default=0.0,
        help="GPUs each worker claims (1 on GPU hosts: one worker per GPU; default 0)",
    )
    cluster.add_argument(
        "--worker-fps-budget",
        type=float,
        help="frames per second each worker renders over all its sessions (a GPU's measured "
        "rate): its capacity is that over 25, in place of --worker-sessions",
    )
    cluster.add_argument(
        "--queue-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="when every worker is full, a new session waits this long for a place, first "
        "come first placed (default 0: refused at once with 503)",
    )
    serve.set_defaults(func=_serve)

    avatar = sub.add_parser("avatar", help="prepare and list avatars")
    avatar_sub = avatar.add_subparsers(dest="avatar_command", required=True)
    prep = avatar_sub.add_parser("prepare", help="prepare an avatar from an image, video or folder")
    prep.add_argument("name")
    prep.add_argument("source", type=Path, help="image, video (any fps) or folder of images")
    _engine_flags(prep)
    prep.add_argument(
        "--bbox-shift",
        type=int,
        default=0,
        help="MuseTalk v1.0 crop shift in pixels (+ opens the mouth more)",
    )
    prep.add_argument(
        "--extra-margin",
        type=int,
        default=10,
        help="MuseTalk v1.5 crop margin below the chin, in pixels",
    )
    prep.add_argument("--max-size", type=int, default=1280, help="longest side of the frames")
    prep.add_argument(
        "--max-seconds", type=float, default=30.0, help="longest idle clip kept from a video"
    )
    prep.add_argument("--force", action="store_true", help="prepare again even if up to date")
    prep.set_defaults(func=_avatar_prepare)
    bake = avatar_sub.add_parser(
        "bake", help="render a MuseTalk bank once (on a GPU) so the CPU engine can serve it"
    )
    bake.add_argument("name")
    _engine_flags(bake)
    bake.set_defaults(func=_avatar_bake, engine="musetalk")
    lst = avatar_sub.add_parser("list", help="list prepared avatars")
    lst.set_defaults(func=_avatar_list)

    ren = sub.add_parser("render", help="render an avatar speaking into an mp4")
    ren.add_argument("--avatar", default="default", help="avatar name (default: the built-in face)")
    what = ren.add_mutually_exclusive_group()
    what.add_argument("--audio", type=Path, help="speech to lip-sync (wav, mp3, m4a, ...)")
    what.add_argument("--text", help="text to speak with the offline voice")
    ren.add_argument(
        "--inference-config",
        type=Path,
        help="MuseTalk test.yaml-style tasks (video_path, audio_path, bbox_shift)",
    )
    ren.add_argument("--voice", help="voice for --text: en-us (default), en-gb, zh, ja, ...")
    ren.add_argument(
        "--preset",
        default="veryfast",
        help="x264 speed/size trade-off: superfast is ~1.8x faster to encode, files ~2x larger",
    )
    ren.add_argument("--emotion", choices=["neutral", "happy", "concerned"], help="expression")
    _engine_flags(ren)
    ren.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        help="output .mp4 (a folder with --inference-config)",
    )
    ren.set_defaults(func=_render)

    ev = sub.add_parser("eval", help="measure output quality")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True)
    sync = ev_sub.add_parser("sync", help="how well the mouth follows the speech")
    sync.add_argument("video", type=Path)
    sync.add_argument("--audio", type=Path, help="speech to compare with (default: the video's)")
    sync.add_argument("--json", action="store_true", help="print one JSON object")
    sync.set_defaults(func=_eval_sync)
    lips = ev_sub.add_parser(
        "lips",
        help="the mouth against real people saying the same words",
        description="Compare the mouth opening of VIDEO with a real talking clip (--truth). "
        "Without VIDEO, run the whole method on each --truth clip: its most closed-mouth "
        "frame becomes a still avatar, driven by the clip's audio alone, and the render is "
        "compared with the clip; per clip and the medians. With --footage, an avatar is "
        "prepared from the clip's first 60 % (its talking footage, video and audio), "
        "driven by the audio of the last 40 % and compared with the real last 40 %.",
    )
    lips.add_argument("video", type=Path, nargs="?", help="rendered video to measure")
    lips.add_argument(
        "--truth", type=Path, nargs="+", required=True, help="real talking clip(s), own audio"
    )
    lips.add_argument("--keep", type=Path, help="folder to keep the rendered mp4s in")
    lips.add_argument(
        "--footage",
        action="store_true",
        help="measure the footage bank: avatar from each clip's first 60 %%, driven by the rest",
    )
    lips.add_argument(
        "--reverse",
        action="store_true",
        help="with --footage: learn from the last 60 %% and compare the first 40 %% instead",
    )
    lips.add_argument("--json", action="store_true", help="print one JSON object")
    _engine_flags(lips)
    lips.set_defaults(func=_eval_lips)
    bil = ev_sub.add_parser(
        "bilabials",
        help="do the lips shut on m, b and p (from audio alone and from text)",
        description="Speak sentences with espeak-ng, render each from its audio alone and "
        "from its timings, and count the m/b/p whose middle frame shows shut lips.",
    )
    bil.add_argument("--sentences", type=Path, help="text file, one sentence per line")
    bil.add_argument("--voice", help="espeak-ng voice (default en-us)")
    bil.add_argument("--avatar", default="default", help="avatar (default: the built-in face)")
    bil.add_argument("--json", action="store_true", help="print one JSON object")
    _engine_flags(bil)
    bil.set_defaults(func=_eval_bilabials)
    models = sub.add_parser("models", help="download and list model weights")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    get = models_sub.add_parser("download", help="fetch a model's official files (resumable)")
    get.add_argument("model", choices=["musetalk"])
    get.add_argument("--version", choices=["v15", "v10", "all"], default="v15")
    get.set_defaults(func=_models_download)
    have = models_sub.add_parser("list", help="what is present under the data root")
    have.set_defaults(func=_models_list)
    return parser


def _models_download(args: argparse.Namespace) -> None:
    from rtlipsync.engines.musetalk import weights

    root = weights.download(args.version, progress=not args.quiet)
    print(f"MuseTalk {args.version}: all files present in {root}")


def _models_list(args: argparse.Namespace) -> None:
    from rtlipsync.engines.musetalk import weights

    print(f"MuseTalk, under {weights.models_root()}:")
    for f, ok in weights.status():
        versions = "/".join(f.versions)
        purpose = f.purpose + (" (optional)" if f.optional else "")
        print(f"  {'present' if ok else 'missing':8} {f.path:45} {versions:8} {purpose}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        return _run(args)
    with native_logs_hidden():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    configure_logging(args.verbose)
    if args.command == "render" and args.inference_config is None and not (args.audio or args.text):
        print("error: give --audio FILE, --text TEXT or --inference-config FILE", file=sys.stderr)
        return 2
    try:
        args.func(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
