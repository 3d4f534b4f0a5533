"""ad-run: score frames from a camera, video, stream, folder or hot folder with an artifact, torch-free;
one decision record per frame, NG evidence, optional webhook / MQTT outputs and a live view.

Every output is opened before the first frame, so an unwritable path fails at start-up with one line.
SIGINT / SIGTERM finish the frame in flight, flush, print the summary and exit 0; with
``--exit-on-disconnect`` a lost live source ends the run with exit code 1 (for a supervisor to restart).
A record that cannot be written (a full disk) ends the run: one line, the summary, exit 1.
stdout gets one readable line per frame (JSON lines with ``--json``); files get JSONL / CSV.
"""

from __future__ import annotations

import click

from ..runtime.precisions import ALL_PRECISIONS
from ..scoring.heads import KNN_KERNELS
from .common import one_line_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", type=click.Path())
@click.option("--source", default=None, help="Video file, rtsp:// or http(s):// stream URL, folder, glob, .txt list or image.")
@click.option("--camera", type=int, default=None, help="Camera device index (cv2.VideoCapture).")
@click.option("--watch", is_flag=True, help="--source is a hot folder: process new files as they arrive, each once.")
@click.option("--watch-state", type=click.Path(dir_okay=False), default=None,
              help="State file of processed names for --watch (default: SOURCE/.anomedge-processed).")
@click.option("--settle-s", type=float, default=1.0, show_default=True,
              help="--watch: take a file once its size and mtime stayed the same this long.")
@click.option("--watch-retries", type=int, default=3, show_default=True,
              help="--watch: retries (with back-off) of a file that cannot be read yet.")
@click.option("--loop", is_flag=True, help="Start a video file again at its end (soak tests, demos).")
@click.option("--width", type=int, default=None, help="Camera/stream capture width (where the driver allows).")
@click.option("--height", type=int, default=None, help="Capture height.")
@click.option("--fps", type=float, default=None, help="Capture frame rate.")
@click.option("--exposure", type=float, default=None, help="Camera exposure (driver units).")
@click.option("--gain", type=float, default=None, help="Camera gain (driver units).")
@click.option("--roi", default=None, help="Crop x,y,w,h (frame pixels) before preprocessing.")
@click.option("--policy", type=click.Choice(["latest", "all"]), default=None,
              help="Capture queue: latest drops stale frames (default for cameras/streams), all applies back-pressure.")
@click.option("--capture-thread/--no-capture-thread", default=True, show_default=True,
              help="Read frames on a background thread (overlaps decoding with inference).")
@click.option("--max-frames", type=int, default=None, help="Stop after this many records.")
@click.option("--pipeline-depth", type=click.IntRange(0, 8), default=0, show_default=True,
              help="Frames computed ahead on worker threads (0: one at a time); same records, same order "
                   "(docs/throughput.md).")
@click.option("--exit-on-disconnect", is_flag=True, help="End the run (exit 1) when a live source disconnects.")
@click.option("--reconnect-max-s", type=float, default=30.0, show_default=True, help="Longest reconnect back-off.")
@click.option("--open-timeout-s", type=float, default=10.0, show_default=True, help="Give up opening a source after this.")
@click.option("--backend", default="onnxruntime", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(ALL_PRECISIONS), default=None,
              help="Model variant (fp16 / int8 made by ad-quantize) or OpenVINO inference precision (fp32 / bf16 / fp16).")
@click.option("--placement", type=click.Choice(["host", "graph"]), default=None,
              help="Scoring on the host (fused kernel) or inside the graph (default: as recorded in the artifact).")
@click.option("--allow-fallback", is_flag=True, help="Accept onnxruntime's CPU fallback when a GPU provider fails to load.")
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: all cores).")
@click.option("--threshold", type=float, default=None, help="Override the image threshold from metadata (finite).")
@click.option("--on-error", type=click.Choice(["error", "ng"]), default="error", show_default=True,
              help="A frame that cannot be decided (unreadable, non-finite score): an ERROR record, or NG (reject it).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=64_000_000, show_default=True,
              help="Pixel budget per image file, checked in its header before decoding; larger → ERROR record.")
@click.option("--knn-kernel", type=click.Choice(list(KNN_KERNELS)), default=None,
              help="Host kNN kernel (default: the winner of the race of whole frames on this machine, cached).")
@click.option("--max-tile-batch", type=int, default=16, show_default=True,
              help="Tiled artifact: most tiles per backend call (bounds memory; docs/tiling.md).")
@click.option("--skip-verify", is_flag=True, help="Inspect without first checking the golden frames (see ad-verify).")
@click.option("--jsonl", type=click.Path(dir_okay=False), default=None, help="Append decision records here (JSON lines).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Append decision records here (CSV).")
@click.option("--rotate-mb", type=float, default=None, help="Rotate --jsonl/--csv files at this size.")
@click.option("--fsync", is_flag=True, help="fsync every record (survives power loss; slower).")
@click.option("--save-ng", type=click.Path(file_okay=False), default=None, help="Save overlay + raw frame of NG frames here.")
@click.option("--save-every", type=int, default=0, help="Also save every N-th OK frame (under --save-ng/ok/).")
@click.option("--webhook", default=None, help="POST each NG record as JSON to this URL.")
@click.option("--mqtt", default=None, help="Publish every record to HOST:PORT/TOPIC (needs paho-mqtt).")
@click.option("--serve", default=None, help="Live view and REST API on HOST:PORT (e.g. 127.0.0.1:8080).")
@click.option("--trust", multiple=True, type=click.Path(dir_okay=False),
              help="Public key (PEM) whose signature the artifact must carry (repeatable; implies --require-signature).")
@click.option("--require-signature", is_flag=True, help="Refuse an unsigned artifact (a wrong signature is always refused).")
@click.option("--url", default=None, help="--backend triton: the Triton server HOST:PORT (8000 http, 8001 grpc).")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", show_default=True,
              help="--backend triton: protocol of --url.")
@click.option("--model", "model_name", default=None, help="--backend triton: model name in the repository (default anomedge).")
@click.option("--token", envvar="ANOMEDGE_TOKEN", default=None, show_envvar=True,
              help="Bearer token for --serve (required unless bound to loopback; at least 16 characters).")
@click.option("--allow-host", multiple=True,
              help="Extra Host name the API answers to (repeatable; the bound host and localhost always are).")
@click.option("--json", "as_json", is_flag=True, help="Print each record as a JSON line on stdout (default: a readable line).")
@click.option("--quiet", is_flag=True, help="Print only the summary line.")
@one_line_errors
def main(artifact, source, camera, watch, watch_state, settle_s, watch_retries, loop, width, height, fps, exposure,
         gain, roi, policy, capture_thread, max_frames, pipeline_depth, exit_on_disconnect, reconnect_max_s,
         open_timeout_s, backend, device, precision, placement, allow_fallback, threads, threshold, on_error,
         max_pixels, knn_kernel, max_tile_batch, skip_verify, jsonl, csv_path, rotate_mb, fsync, save_ng, save_every,
         webhook, mqtt, serve, trust, require_signature, url, protocol, model_name, token, allow_host, as_json, quiet):
    """Inspect every frame of a source with ARTIFACT; one decision record per frame and a summary."""
    import contextlib
    import logging
    import signal
    import sys
    import threading

    from ..artifact import Artifact
    from ..runtime.capture import CaptureThread
    from ..runtime.evidence import EvidenceWriter
    from ..runtime.pipeline import Inspector
    from ..runtime.decision import check_threshold
    from ..runtime.pipelined import ThreadBudget, fit_kernel_threads, run_pipelined
    from ..runtime.runner import Runner
    from ..runtime.sinks import ConsoleSink, CsvSink, JsonlSink, SinkError
    from ..runtime.sources import CaptureSettings, VideoSource, open_source, parse_roi

    if source is None and camera is None and serve is None:
        raise click.UsageError("give --camera N or --source PATH_OR_URL (or --serve HOST:PORT for the REST API only)")
    if source is not None and camera is not None:
        raise click.UsageError("give either --camera or --source, not both")
    if max_frames is not None and max_frames < 1:
        raise click.UsageError("--max-frames must be at least 1")
    threshold = check_threshold(threshold)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.getLogger("anomedge").addHandler(handler)
    logging.getLogger("anomedge").setLevel(logging.WARNING)

    address = None
    if serve:
        from ..runtime.serve import check_bind, parse_address

        address = parse_address(serve)
        check_bind(address[0], token)  # before any output is opened or the model loaded

    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        # Outputs first: an unwritable path must fail before any frame is read.
        sinks = []
        for path, cls in ((jsonl, JsonlSink), (csv_path, CsvSink)):
            if path:
                sink = cls(path, fsync=fsync, rotate_mb=rotate_mb)
                stack.callback(sink.close)
                sinks.append(sink.write)
        evidence = EvidenceWriter(save_ng, save_every) if save_ng else None
        if save_every and not save_ng:
            raise click.UsageError("--save-every needs --save-ng DIR")
        region = parse_roi(roi) if roi else None
        if webhook:
            from ..runtime.outputs import WebhookOutput

            hook = WebhookOutput(webhook)
            stack.callback(hook.close)
            sinks.append(hook)
        if mqtt:
            from ..runtime.outputs import MqttOutput, parse_mqtt

            broker = MqttOutput(*parse_mqtt(mqtt))
            stack.callback(broker.close)
            sinks.append(broker)
        if not quiet:
            sinks.append(ConsoleSink(as_json=as_json))

        loaded = Artifact.load(artifact, trust=trust, require_signature=require_signature)
        settings = CaptureSettings(width=width, height=height, fps=fps, exposure=exposure, gain=gain,
                                   open_timeout_s=open_timeout_s, reconnect_max_s=reconnect_max_s,
                                   exit_on_disconnect=exit_on_disconnect, loop=loop)
        frames = None
        if source is not None or camera is not None:
            frames = open_source(source, camera, watch=watch, state_file=watch_state, settings=settings, stop_event=stop,
                                 max_pixels=max_pixels, settle_s=settle_s, retries=watch_retries)
            if isinstance(frames, VideoSource):
                frames.open()
            if hasattr(frames, "close"):
                stack.callback(frames.close)

        options = {k: v for k, v in (("precision", precision), ("allow_fallback", allow_fallback or None)) if v}
        if backend == "triton":
            options.update(url=url, protocol=protocol, model=model_name)
        budget = ThreadBudget.plan(pipeline_depth, threads=threads, backend=backend) if pipeline_depth else None
        inspector = stack.enter_context(Inspector(loaded, backend, device, threshold=threshold,
                                                  threads=budget.intra_op if budget else threads,
                                                  knn_kernel=knn_kernel, placement=placement,
                                                  max_tile_batch=max_tile_batch, **options))
        if budget is not None:  # one thread budget: workers × intra-op threads = the cores (runtime.pipelined)
            fit_kernel_threads(inspector, budget.intra_op)
            stack.enter_context(budget.applied())
        if inspector.threshold is None:
            raise click.UsageError("the artifact has no image threshold: run ad-calibrate or pass --threshold")
        from ..runtime.verify import startup_check

        verified = startup_check(inspector, skip=skip_verify)  # the golden frames, here; exit 2 outside tolerance
        runner = Runner(inspector, sinks, roi=region, evidence=evidence, on_error=on_error)

        capture = None
        if frames is not None and capture_thread:
            chosen = policy or ("latest" if getattr(frames, "live", False) and not watch else "all")
            capture = CaptureThread(frames, chosen, stop_event=stop)
            stack.callback(capture.stop)
        view = None
        if address:
            from ..runtime.serve import LiveView

            info = {"artifact": str(loaded.root), "detector": loaded.metadata.detector, "backend": backend,
                    "source": getattr(frames, "path", None), "verify": verified}
            view = LiveView(runner, info, *address, source=frames, capture=capture, token=token,
                            allowed_hosts=tuple(h for value in allow_host for h in value.split(",") if h)).start()
            stack.callback(view.close)
            runner.observers.append(view.update)
            click.echo(f"live view on {view.url}", err=True)

        def on_signal(signum, _frame):
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        failure = None
        try:
            if frames is None:
                while not stop.wait(0.5):
                    pass
                summary = runner.summary
            else:
                try:
                    summary = run_pipelined(runner, capture if capture is not None else frames, pipeline_depth,
                                            workers=budget.workers if budget else None, stop_event=stop,
                                            max_frames=max_frames, on_done=getattr(frames, "ack", None),
                                            dropped=(lambda: capture.dropped) if capture is not None else None,
                                            reconnects=(lambda: frames.reconnects) if hasattr(frames, "reconnects")
                                            else None)
                except SinkError as exc:  # the summary is still printed; exit 1 below
                    failure, summary = exc, runner.summary
                    stop.set()
                ended = not stop.is_set() and (max_frames is None or summary.frames < max_frames)
                if view is not None and ended and not getattr(frames, "disconnected", False):
                    view.finish()  # a finite source ended by itself: keep serving the results until Ctrl-C
                    click.echo(f"source finished: {summary.line()}; still serving {view.url} (Ctrl-C to stop)", err=True)
                    while not stop.wait(0.5):
                        pass
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
    click.echo(summary.line(), err=not quiet)
    if failure is not None:
        click.echo(f"error: {failure}", err=True)
        sys.exit(failure.exit_code)
    if getattr(frames, "disconnected", False):
        click.echo(f"error: {frames.path}: disconnected (--exit-on-disconnect)", err=True)
        sys.exit(1)
