"""Browse analysed features and name them: a Gradio app over a ``pai analyse-features`` folder.

Shows each feature's statistics, its top-activating frames with the feature's spatial map overlaid and
the clip around its best frames; a name and a description are saved to ``labels.json`` (``LabelStore``:
locked re-read-merge-write, atomic replace). ``read_only`` drops the editing widgets and the save
endpoint, for public deployment. HTTP API (``gradio_client``): ``/list_features``, ``/get_label``,
``/save_label`` (not in read-only mode).

Imports only the standard library, gradio and ``.labels``: ``export_space`` copies this module and
``labels.py`` into a Hugging Face Space folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from .labels import LABELS_NAME, LabelStore  # noqa: E402

SUMMARY_NAME = "summary.json"


class FeatureBrowser:
    """The analysis folder's data, independent of the UI (so the API and the widgets share it)."""

    def __init__(
        self,
        analysis_dir: str | Path,
        labels_path: str | Path | None = None,
        mirrors: Sequence[str | Path] | None = None,
    ):
        self.root = Path(analysis_dir).resolve()
        summary_file = self.root / SUMMARY_NAME
        if not summary_file.is_file():
            raise FileNotFoundError(f"{self.root} is not a pai analyse-features folder: no {SUMMARY_NAME}")
        self.summary = json.loads(summary_file.read_text())
        self.store = LabelStore(Path(labels_path) if labels_path else self.root / LABELS_NAME, mirrors)
        self.ids = [int(f["feature"]) for f in self.summary["features"]]
        self._docs: dict[int, dict] = {}

    def doc(self, feature: int) -> dict:
        feature = int(feature)
        if feature not in self.ids:
            raise KeyError(f"feature {feature} is not in this analysis; it has {self.ids}")
        if feature not in self._docs:
            entry = next(f for f in self.summary["features"] if int(f["feature"]) == feature)
            self._docs[feature] = json.loads((self.root / entry["json"]).read_text())
        return self._docs[feature]

    def choices(self) -> list[tuple[str, str]]:
        """Dropdown entries (shown text, feature id): named features first."""
        labels = self.store.all()
        named = [(f"{labels[f]['name']}  (f{f})", str(f)) for f in self.ids if labels.get(f, {}).get("name")]
        unnamed = [(f"f{f}", str(f)) for f in self.ids if not labels.get(f, {}).get("name")]
        return named + unnamed

    def stats_markdown(self, feature: int) -> str:
        d = self.doc(feature)
        s = d["stats"]
        rank = "" if d["rank"] is None else f" · rank {d['rank'] + 1} by {self.summary['rank_by']}"
        peaks = ", ".join(f"#{t['rank'] + 1}: {t.get('peak_on') or '-'}" for t in d["top_frames"])
        return (
            f"### Feature {feature}{rank}\n"
            f"active in **{100 * s['frequency']:.1f}%** of {self.summary['n_frames']} frames · "
            f"mean {s['mean']:.3g} · std {s['std']:.3g} · max {s['max']:.3g}\n\n"
            f"strongest token per top frame: {peaks}"
        )

    def gallery(self, feature: int) -> list[tuple[str, str]]:
        return [
            (
                str(self.root / t["image"]),
                f"#{t['rank'] + 1} ep {t['episode_index']} fr {t['frame_index']} · {t['activation']:.3g}",
            )
            for t in self.doc(feature)["top_frames"]
        ]

    def clips(self, feature: int) -> list[tuple[str, str]]:
        """(shown text, path) of the feature's clips."""
        return [
            (f"around #{t['rank'] + 1} (ep {t['episode_index']} fr {t['frame_index']})", str(self.root / t["clip"]))
            for t in self.doc(feature)["top_frames"]
            if t.get("clip")
        ]


def build_app(
    analysis_dir: str | Path,
    read_only: bool = False,
    labels_path: str | Path | None = None,
    mirrors: Sequence[str | Path] | None = None,
) -> Any:  # a gr.Blocks that also carries ``pai_browser``, its FeatureBrowser
    """The Gradio Blocks app (not launched). ``mirrors``: more labels.json files every save updates."""
    import gradio as gr

    data = FeatureBrowser(analysis_dir, labels_path, mirrors)
    s = data.summary
    clip_is_gif = s.get("config", {}).get("clip_format") == "gif"

    def show(feature: str | None) -> tuple:
        if feature in (None, ""):
            return "", [], gr.update(choices=[], value=None), "", ""
        clips = data.clips(int(feature))
        label = data.store.get(int(feature))
        return (
            data.stats_markdown(int(feature)),
            data.gallery(int(feature)),
            gr.update(choices=clips, value=clips[0][1] if clips else None),
            label.get("name", ""),
            label.get("description", ""),
        )

    def save(feature: str | None, name: str | None, description: str | None) -> tuple:
        if feature in (None, ""):
            return "Choose a feature first.", gr.update()
        data.store.save(int(feature), name or "", description or "")
        return (
            f"Saved f{feature} as **{(name or '').strip() or '(no name)'}** to `{data.store.path}`",
            gr.update(choices=data.choices(), value=str(feature)),
        )

    with gr.Blocks(title=f"pai features: {s['dataset_repo_id']}") as app:
        gr.Markdown(
            f"## SAE features of `{s['dataset_repo_id']}`\n{s['n_frames']} frames · {s['n_latents']} features "
            f"({s['counts']['dead']} dead, {s['counts']['always_on']} always on) · {len(data.ids)} shown, ranked by "
            f"{s['rank_by']}" + (" · read-only" if read_only else "")
        )
        with gr.Row():
            with gr.Column(scale=1):
                choices = data.choices()
                picker = gr.Dropdown(choices=choices, label="Feature", value=choices[0][1] if choices else None)
                stats = gr.Markdown()
                name = gr.Textbox(label="Name", interactive=not read_only, max_lines=1)
                description = gr.Textbox(label="Description", lines=4, interactive=not read_only)
                status = gr.Markdown()
                if not read_only:
                    save_button = gr.Button("Save label", variant="primary")
            with gr.Column(scale=3):
                gallery = gr.Gallery(
                    label="Top-activating frames (feature map overlaid, peak ringed)",
                    columns=4,
                    height="auto",
                    object_fit="contain",
                )
                clip_picker = gr.Dropdown(label="Clip", choices=[])
                clip = (
                    gr.Image(label="Clip", type="filepath")
                    if clip_is_gif
                    else gr.Video(label="Clip", autoplay=True, loop=True, height=360)
                )
        shown = [stats, gallery, clip_picker, name, description]
        picker.change(show, picker, shown, api_visibility="private")
        # on page load: labels saved by other editors since the app started show up in the picker
        app.load(
            lambda f: (gr.update(choices=data.choices()), *show(f)), picker, [picker, *shown], api_visibility="private"
        )
        clip_picker.change(lambda p: p, clip_picker, clip, api_visibility="private")
        if not read_only:
            save_button.click(save, [picker, name, description], [status, picker], api_visibility="private")

        def list_features() -> list[dict]:
            """Features of the analysis with their labels and statistics."""
            labels = data.store.all()
            return [{"feature": f, "label": labels.get(f), "stats": data.doc(f)["stats"]} for f in data.ids]

        def get_label(feature: int) -> dict:
            """The saved label of a feature ({"name": "", "description": ""} when none)."""
            return data.store.get(int(feature))

        gr.api(list_features, api_name="list_features")
        gr.api(get_label, api_name="get_label")
        if not read_only:

            def save_label(feature: int, name: str, description: str = "") -> dict:
                """Name and describe a feature (empty name and description remove the label)."""
                data.store.save(int(feature), name, description)
                return data.store.get(int(feature))

            gr.api(save_label, api_name="save_label")
    app.pai_browser = data
    return app


def launch(app: Any, host: str = "127.0.0.1", port: int | None = None, block: bool = True, **kwargs: Any) -> Any:
    """Serve the app; only the analysis folder is served as files."""
    return app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        share=False,
        allowed_paths=[str(app.pai_browser.root)],
        show_error=True,
        quiet=not block,
        **kwargs,
    )


APP_PY = '''"""Hugging Face Space: browse the SAE features of a pai analysis (pai label-features --export-space)."""
import os

from pai_label_app.label_app import build_app

READ_ONLY = os.environ.get("PAI_READ_ONLY", "1") != "0"  # set PAI_READ_ONLY=0 (a Space secret/variable) to edit

app = build_app(os.path.join(os.path.dirname(os.path.abspath(__file__)), "analysis"), read_only=READ_ONLY)

if __name__ == "__main__":
    app.launch(allowed_paths=[os.path.join(os.path.dirname(os.path.abspath(__file__)), "analysis")])
'''

README_MD = """---
title: {title}
emoji: 🔎
colorFrom: blue
colorTo: indigo
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
---

SAE features of the LeRobot policy on `{dataset}`, made with `pai analyse-features`.
Each feature shows its top-activating frames with the feature's spatial map overlaid and a clip.

Deploy from this folder: `pip install gradio && gradio deploy` (asks for a Hugging Face token), or create a
Gradio Space and push these files. Read-only by default; set the Space variable `PAI_READ_ONLY=0` to edit.
"""


def export_space(analysis_dir: str | Path, out_dir: str | Path, title: str = "") -> Path:
    """Write a self-contained Space folder: app.py, requirements.txt, README.md (Space card), the app
    package and a copy of the analysis (with its labels.json)."""
    import gradio

    src, out = Path(analysis_dir).resolve(), Path(out_dir)
    summary = FeatureBrowser(src).summary
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder for the Space")
    pkg = out / "pai_label_app"
    pkg.mkdir(parents=True)
    here = Path(__file__).parent
    for name in ("label_app.py", "labels.py"):
        shutil.copy2(here / name, pkg / name)
    (pkg / "__init__.py").write_text('"""Copied from pai_core.analysis by pai label-features --export-space."""\n')
    shutil.copytree(src, out / "analysis", ignore=shutil.ignore_patterns("*.lock", ".labels.json.*"))
    (out / "app.py").write_text(APP_PY)
    import filelock

    (out / "requirements.txt").write_text(f"gradio=={gradio.__version__}\nfilelock=={filelock.__version__}\n")
    title = title or f"pai features {summary['dataset_repo_id']}"
    (out / "README.md").write_text(
        README_MD.format(
            title=title.replace(":", " "), gradio_version=gradio.__version__, dataset=summary["dataset_repo_id"]
        )
    )
    return out
