"""Replay entry points: a bag or a dataset episode -> every output in one directory.

Chooses sinks from ``ReplayOptions``, runs the batched pipeline loop, then writes ``summary.json`` and
``report.html`` (also when the source broke off, before re-raising its error).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ..errors import PaiError
from ..observation import Observation
from ..outputs import prepare_output_dir
from ..overlay import OverlayConfig
from ..pipeline import Pipeline
from ..saliency import SaliencyConfig
from ..sources.accounting import Accounting
from .runner import RunConfig, RunStats, run

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from ..foxglove_playback import PlaybackServer
    from ..settings import PaiSettings
    from .video import VideoSink


@dataclass
class ReplayOptions:
    """Args:
    output_dir: created if missing; existing outputs of the same names are replaced.
    batch_size: observations per forward pass (default 8; 1 while serving Foxglove, so that each frame is
        sent the moment it is computed instead of a batch at a time).
    video: write overlay videos.
    video_maps: overlays to write: "attention" and/or "ood" (OOD needs an SAE).
    mcap: write ``replay.mcap`` with the node's topics.
    compressed: also write the overlays as CompressedImage (jpeg) topics, like the node.
    foxglove_port: serve the replay on ws://HOST:PORT while it runs (None: off; 0: a free port).
    foxglove_host: interface the Foxglove server listens on ("0.0.0.0": reachable from other machines).
    foxglove_keep: after the replay, keep serving it with Foxglove's playback controls (play, pause, seek,
        speed); ``ReplayResult.foxglove`` is that server, which the caller ``wait()``s for and ``close()``s.
    publish: publish the node's topics with rclpy while it runs (needs rclpy; see ``ros_publish``).
    namespace: node namespace the MCAP / published topics use.
    overlay: overlay look (the settings file's ``overlay`` block for bags).
    saliency: integrated-gradients settings; when given, ``saliency.parquet`` and (with ``video``)
        ``<camera>_saliency.mp4`` are written too (``replay.saliency_sink``). None: off.
    progress: tqdm progress bar.
    """

    output_dir: str | Path
    batch_size: int | None = None
    video: bool = True
    video_maps: tuple[str, ...] = ("attention", "ood")
    mcap: bool = True
    compressed: bool = True
    foxglove_port: int | None = None
    foxglove_host: str = "127.0.0.1"
    foxglove_keep: bool = False
    publish: bool = False
    namespace: str = "/pai_introspector"
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    progress: bool = True
    saliency: SaliencyConfig | None = None

    def __post_init__(self) -> None:
        if self.batch_size is None:
            self.batch_size = 1 if self.foxglove_port is not None else 8
        if self.foxglove_keep and self.foxglove_port is None:
            raise ValueError("ReplayOptions.foxglove_keep needs foxglove_port (the port to keep serving on)")


@dataclass
class ReplayResult:
    output_dir: Path
    stats: RunStats
    accounting: Accounting
    files: dict[str, str]
    topics: dict[str, int]
    foxglove: PlaybackServer | None = None  # with ReplayOptions.foxglove_keep


def replay(
    observations: Iterable[Observation],
    pipeline: Pipeline,
    options: ReplayOptions,
    accounting: Accounting,
    total: int | None = None,
    fps: float = 10.0,
    source: str = "",
) -> ReplayResult:
    """Run ``observations`` through ``pipeline`` into every output chosen by ``options``.

    The run writes into a fresh folder inside ``options.output_dir`` and moves its files into place when it
    ends, successful or not (``move_into_place``): the folder never mixes this run's files with an earlier
    run's, and files that are not a replay's are left alone."""
    final = prepare_output_dir(Path(options.output_dir), "replay output folder (--output-dir)")
    out = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=final))  # this run's files, moved into place at the end
    try:
        return _replay(observations, pipeline, options, accounting, total, fps, source, out, final)
    finally:
        move_into_place(out, final)


def _replay(
    observations: Iterable[Observation],
    pipeline: Pipeline,
    options: ReplayOptions,
    accounting: Accounting,
    total: int | None,
    fps: float,
    source: str,
    out: Path,
    final: Path,
) -> ReplayResult:
    """``replay`` writing into the staging folder ``out``; the result names ``final``."""
    from .report import ReportSink, write_report
    from .run_info import RunInfo
    from .tables import TableSink

    info = RunInfo.of(pipeline)
    sinks: list = [TableSink(out, info)]
    from .video import OverlayRenders

    renders = OverlayRenders(options.overlay)  # rendered once for the videos and the messages
    video = messages = None
    if options.video:
        from .video import VideoSink

        video = VideoSink(out, fps, options.overlay, options.video_maps, info=info, renders=renders)
        sinks.append(video)
    saliency = None
    if options.saliency is not None:
        from ..saliency import IntegratedGradients
        from .saliency_sink import SaliencySink

        ig = IntegratedGradients(pipeline.engine, options.saliency)
        saliency = SaliencySink(out, ig, info, fps, options.overlay, video=options.video)
        sinks.append(saliency)
    writers: list = []
    if options.mcap:
        from .mcap_sink import McapWriter

        writers.append(McapWriter(out / "replay.mcap"))
    foxglove = None
    if options.foxglove_port is not None:
        from ..foxglove_live import FoxgloveConfig, output_topics
        from .foxglove_sink import FoxgloveWriter

        foxglove = FoxgloveWriter(
            output_topics(pipeline, options.compressed, options.namespace),
            FoxgloveConfig(
                port=options.foxglove_port,
                host=options.foxglove_host,
                name=f"pai replay {source}".strip(),
                compressed=options.compressed,
                namespace=options.namespace,
            ),
            keep=options.foxglove_keep,
        )
        writers.append(foxglove)
    if options.publish:
        from .ros_publish import RosPublisher

        writers.append(RosPublisher(options.namespace))
    if writers:
        from .messages import MessageSink

        messages = MessageSink(info, writers, options.overlay, options.compressed, options.namespace, renders)
        sinks.append(messages)
    report = ReportSink(info)
    sinks.append(report)
    stats = RunStats()
    error: PaiError | None = None
    try:
        stats = run(
            observations,
            pipeline,
            sinks,
            accounting,
            RunConfig(cast(int, options.batch_size), progress=options.progress),
            total,
        )
    except PaiError as exc:
        error = exc
    except BaseException:
        if foxglove is not None and foxglove.playback is not None:
            foxglove.playback.close()
        raise
    files = _files(out, video)
    if saliency is not None:
        files |= saliency.files
    summary = {
        "source": source,
        "policy": info.policy,
        "sae": "yes" if info.has_sae else "no",
        "frames processed": accounting.frames_processed,
        "frames skipped": sum(accounting.frames_skipped.values()),
        "wall time (s)": round(stats.wall_s, 3),
        "frames/s": round(stats.fps, 2),
        "recorded span (s)": round(stats.span_s, 3),
        "x real time": round(stats.realtime_factor, 2),
        "batch size": options.batch_size,
        "threshold": info.threshold,
        "alarm frames": int(sum(report.series.alarm)),
        **{k: v for k, v in pipeline.ood_summary().items() if k.startswith("reference_")},
    }
    (out / "summary.json").write_text(
        json.dumps(
            {
                **summary,
                "accounting": accounting.to_dict(),
                "topics": messages.counts if messages else {},
                "files": files,
            },
            indent=2,
            default=str,
        )
    )
    files["summary.json"] = "counts, timing and accounting"
    write_report(out, report, accounting, summary, files)
    files["report.html"] = "this report"
    playback = foxglove.playback if foxglove is not None else None
    if error is not None:
        if playback is not None:
            playback.close()
        raise error
    return ReplayResult(final, stats, accounting, files, messages.counts if messages else {}, playback)


STAGING_PREFIX = ".pai-replay-"


def move_into_place(staging: Path, final: Path) -> None:
    """Move a run's files from ``staging`` into ``final``. The files of an earlier replay there (those its
    ``summary.json`` lists, and its report) that this run did not write are removed first, so a failed
    or smaller run never sits beside an earlier run's report, videos or tables."""
    earlier: set[str] = set()
    try:
        from .report import REPORT_FILES  # besides the files the summary lists: the report and its plots

        listed = json.loads((final / "summary.json").read_text()).get("files", {})
        earlier = set(listed) | {"summary.json", *REPORT_FILES}
    except (OSError, ValueError, AttributeError):  # no earlier replay here (or not one that pai wrote)
        pass
    written = {p.name for p in staging.iterdir()}
    for name in earlier - written:
        old = final / name
        if old.is_file() and old.parent == final:
            old.unlink()
    for path in staging.iterdir():
        os.replace(path, final / path.name)
    staging.rmdir()


def _files(out: Path, video: VideoSink | None) -> dict[str, str]:
    files = {}
    for name, what in (
        ("attention.parquet", "attention shares and action per frame"),
        ("features.parquet", "sparse SAE feature activations per frame"),
        ("ood.parquet", "OOD score, threshold, alarm per frame"),
        ("replay.mcap", "the node's topics as ROS 2 messages (open in Foxglove)"),
    ):
        if (out / name).is_file():
            files[name] = what
    if video is not None:
        for name, n in video.files.items():
            files[name] = f"{n} frames"
    return files


def replay_bag(path: str | Path, settings: PaiSettings, pipeline: Pipeline, options: ReplayOptions) -> ReplayResult:
    """Replay a rosbag2 folder or .mcap/.db3 file, topics mapped by ``settings`` (``load_settings``)."""
    from ..sources.bag import BagSource, BagTopics

    engine = pipeline.engine
    topics = BagTopics.from_settings(settings, engine.camera_names, needs_state=engine.state_dim > 0)
    accounting = Accounting()
    with BagSource(path, topics, accounting) as source:
        n = len(source)
        fps = (n - 1) / source.duration_s if n > 1 and source.duration_s > 0 else 10.0
        return replay(source, pipeline, options, accounting, total=n, fps=fps, source=str(path))


def replay_episode(dataset: LeRobotDataset, episode: int, pipeline: Pipeline, options: ReplayOptions) -> ReplayResult:
    """Replay one LeRobot dataset episode (image or video dataset)."""
    from ..preflight import check_dataset_for_policy
    from ..sources.dataset import episode_bounds, iter_episode

    check_dataset_for_policy(dataset, pipeline.engine, [episode], pipeline.engine.loaded.source)
    start, stop = episode_bounds(dataset, episode)
    accounting = Accounting()
    count = accounting.input(f"episode {episode}")
    count.received = stop - start

    def observations():
        for obs in iter_episode(dataset, episode):
            count.used += 1
            yield obs

    result = None
    try:
        result = replay(
            observations(),
            pipeline,
            options,
            accounting,
            total=stop - start,
            fps=float(dataset.fps),
            source=f"{dataset.repo_id} episode {episode}",
        )
    finally:
        missing = count.received - count.used
        if missing and result is None:
            count.skipped["not read: replay stopped early"] = missing
    return result


def replay_episodes(
    dataset: LeRobotDataset, episodes: Sequence[int] | None, pipeline: Pipeline, options: ReplayOptions
) -> dict[int, ReplayResult]:
    """Replay several episodes (None or empty: every episode, the seed's default), each into its own
    ``episode_<index>`` folder under ``options.output_dir`` with every output of ``replay_episode``; the
    pipeline (and its alarm) starts over for each. ``episodes.json`` beside them lists every episode's frames,
    alarm frames and folder. An episode that fails stops the run after its outputs are written."""
    import dataclasses

    from ..preflight import check_dataset_for_policy
    from ..sources.dataset import select_episodes

    chosen = select_episodes(dataset, episodes)
    check_dataset_for_policy(dataset, pipeline.engine, chosen, pipeline.engine.loaded.source)
    out = prepare_output_dir(Path(options.output_dir), "replay output folder (--output-dir)")
    results: dict[int, ReplayResult] = {}
    index: dict[str, dict] = {}
    for episode in chosen:
        folder = out / f"episode_{episode:06d}"
        result = replay_episode(dataset, episode, pipeline, dataclasses.replace(options, output_dir=folder))
        results[episode] = result
        acc = result.accounting
        index[str(episode)] = {
            "folder": folder.name,
            "frames processed": acc.frames_processed,
            "frames skipped": sum(acc.frames_skipped.values()),
            "alarm frames": _alarm_frames(folder),
            "frames/s": round(result.stats.fps, 2),
        }
        (out / "episodes.json").write_text(json.dumps({"dataset": str(dataset.repo_id), "episodes": index}, indent=2))
    return results


def _alarm_frames(folder: Path) -> int:
    summary = folder / "summary.json"
    return int(json.loads(summary.read_text()).get("alarm frames", 0)) if summary.is_file() else 0
