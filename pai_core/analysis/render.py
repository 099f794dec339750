"""Pictures of features: camera images with a feature's spatial map overlaid, short clips, the HTML index."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..overlay import heatmap_overlay


def fit_height(image: np.ndarray, height: int) -> np.ndarray:
    """Resize an RGB image to ``height`` pixels, keeping its aspect ratio."""
    h, w = image.shape[:2]
    if h == height:
        return image
    width = max(1, int(round(w * height / h)))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if height < h else cv2.INTER_LINEAR)


def feature_panel(
    images: dict[str, np.ndarray],
    maps: dict[str, np.ndarray],
    vmax: float,
    caption: str,
    colormap: str = "jet",
    alpha: float = 0.5,
) -> np.ndarray:
    """Cameras side by side, each with the feature's (h, w) token map overlaid and its peak ringed, under
    a caption strip. Maps are divided by ``vmax`` (the feature's maximum) so strengths compare across frames."""
    tiles = []
    height = max(img.shape[0] for img in images.values())
    for cam, image in images.items():
        heat = maps[cam] / vmax if vmax > 0 else np.zeros_like(maps[cam])
        tile = heatmap_overlay(fit_height(image, height), heat, colormap, alpha)
        if heat.max() > 0:
            r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
            th, tw = tile.shape[:2]
            center = (int((c + 0.5) * tw / heat.shape[1]), int((r + 0.5) * th / heat.shape[0]))
            radius = max(4, int(0.5 * min(th / heat.shape[0], tw / heat.shape[1])))
            cv2.circle(tile, center, radius, (255, 255, 255), 2, cv2.LINE_AA)
        tiles.append(tile)
        tiles.append(np.full((height, 2, 3), 255, np.uint8))
    body = np.concatenate(tiles[:-1], axis=1)
    strip = np.full((22, body.shape[1], 3), 24, np.uint8)
    cv2.putText(strip, caption, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([strip, body], axis=0)


def write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def _even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    return np.ascontiguousarray(frame[: h - h % 2, : w - w % 2])


def write_clip(path: Path, frames: Sequence[np.ndarray], fps: float, fmt: str = "mp4") -> None:
    """H.264 MP4 (plays in browsers and Gradio) or an animated GIF of equally sized RGB frames."""
    if fmt == "gif":
        from PIL import Image

        pics = [Image.fromarray(f) for f in frames]
        pics[0].save(path, save_all=True, append_images=pics[1:], duration=int(1000 / max(fps, 1)), loop=0)
        return
    from ..video_writer import write_mp4

    write_mp4(path, [_even(f) for f in frames], fps, preset="medium", faststart=True)


def index_html(summary: dict, features: list[dict], labels: dict[int, dict]) -> str:
    """A static page: counts, then one row per selected feature with its stats and top-frame thumbnails."""
    e = html.escape
    rows = []
    for feat in features:
        fid = feat["feature"]
        label = labels.get(fid, {})
        name = label.get("name") or f"f{fid}"
        s = feat["stats"]
        thumbs = "".join(
            f'<a href="{e(t["image"])}"><img src="{e(t["image"])}" loading="lazy" '
            f'title="episode {t["episode_index"]} frame {t["frame_index"]}: {t["activation"]:.3g}"></a>'
            for t in feat["top_frames"]
        )
        clip = next((t["clip"] for t in feat["top_frames"] if t.get("clip")), None)
        if clip and clip.endswith(".mp4"):
            clip_html = f'<video src="{e(clip)}" controls loop muted preload="none"></video>'
        elif clip:
            clip_html = f'<img src="{e(clip)}">'
        else:
            clip_html = ""
        rows.append(
            f'<tr id="f{fid}"><td><b>{e(name)}</b><br>feature {fid}<br><a href="{e(feat["json"])}">json</a>'
            f"<br><small>{e(label.get('description', ''))}</small></td>"
            f"<td>var {s['variance']:.3g}<br>freq {100 * s['frequency']:.1f}%<br>mean {s['mean']:.3g}"
            f'<br>max {s["max"]:.3g}</td><td class="thumbs">{thumbs}</td><td>{clip_html}</td></tr>'
        )
    counts = summary["counts"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pai features: {e(summary["dataset_repo_id"])}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; }}
table {{ border-collapse: collapse; }} td, th {{ border-bottom: 1px solid #ddd; padding: 6px; vertical-align: top; }}
.thumbs img {{ height: 110px; margin: 0 4px 4px 0; }} video, td > img {{ height: 140px; }}
</style></head><body>
<h1>SAE features of {e(summary["dataset_repo_id"])}</h1>
<p>{summary["n_frames"]} frames from {len(summary["episodes"])} episodes; {summary["n_latents"]} features:
{counts["dead"]} dead, {counts["always_on"]} always on (&ge; {100 * summary["always_on_threshold"]:.0f}% of frames),
{counts["active"]} others. Showing {len(features)} ranked by {e(summary["rank_by"])}.
Policy <code>{e(str(summary["policy_path"]))}</code>, SAE <code>{e(str(summary["sae_path"]))}</code>.</p>
<table><tr><th>feature</th><th>stats</th><th>top frames</th><th>clip</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
