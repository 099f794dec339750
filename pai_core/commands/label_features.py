"""``pai label-features``: browse analysed features and name them in a Gradio app (or export a Space)."""

from __future__ import annotations

import argparse

from . import args as flags


def register(sub: flags.Subparsers) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "label-features",
        help="browse analysed features and name them (Gradio app, HF Space export)",
        description="Serve a Gradio app over an analyse-features folder: top frames with feature maps, clips, "
        "and a form that saves names and descriptions to labels.json (the file the node and "
        "replay read beside the SAE). With --export-space, write a Hugging Face Space folder "
        "instead; deploy it with `cd DIR && gradio deploy`.",
    )
    p.add_argument("--analysis-dir", required=True, help="pai analyse-features output folder")
    p.add_argument("--labels-path", default="", help="labels file (default: ANALYSIS_DIR/labels.json)")
    flags.add_sae_path(
        p,
        required=False,
        default="",
        help="also write every label into SAE_PATH/labels.json (a local SAE folder), where node and replay find it",
    )
    p.add_argument("--read-only", action="store_true", help="browse only: no editing, no save endpoint")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--export-space",
        metavar="DIR",
        default="",
        help="write app.py, requirements.txt, README.md and the analysis to DIR for `gradio deploy`",
    )
    return p


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from ..analysis.label_app import build_app, export_space, launch
    from ..analysis.labels import LABELS_NAME
    from ..errors import UsageError

    log = logging.getLogger("pai")
    analysis = Path(args.analysis_dir)
    try:
        if args.export_space:
            out = export_space(analysis, args.export_space)
            print(f"Space written to {out}. Deploy: cd {out} && gradio deploy  (read-only unless PAI_READ_ONLY=0)")
            return 0
        mirrors = []
        if args.sae_path:
            sae = Path(args.sae_path)
            if not (sae / "config.json").is_file():
                raise UsageError(f"--sae-path {sae} is not an SAE directory (no config.json)")
            mirrors.append(sae / LABELS_NAME)
        app = build_app(analysis, read_only=args.read_only, labels_path=args.labels_path or None, mirrors=mirrors)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    log.info("labels: %s%s", app.pai_browser.store.path, f" (and {mirrors[0]})" if mirrors else "")
    launch(app, host=args.host, port=args.port, block=True)
    return 0
