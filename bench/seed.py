"""The seed's components (``physical-ai-interpretability`` 0.1.4), loaded for the benchmarks to measure live.

One function per seed component; each loads the one module file it needs from the installed wheel.

Install (bench environment only; ``scripts/install_bench.sh`` does it from ``requirements/bench.txt``)::

    .venv/bin/python -m pip install --no-deps physical-ai-interpretability==0.1.4

``--no-deps``: the wheel's metadata asks for ``wandb``, ``robocandywrapper`` and ``lerobot`` unpinned, and
pip would replace our torch and LeRobot 0.4.4 to satisfy it. The modules loaded here need none of them.

The shim, line by line (the only code between the seed and LeRobot 0.4.4):

- ``importlib.util.find_spec(PACKAGE)`` finds the installed package *without importing it*: the package's
  ``__init__`` imports ``sae.trainer`` and ``ood.ood_detector``, which import ``wandb``, ``robocandywrapper``
  and LeRobot's dataset factory at import time; they are not installed (``--no-deps``) and the mapper uses
  none of them.
- ``spec_from_file_location(...)`` + ``exec_module`` run the one component file under a private module name
  (``_pai_seed.<file>``), so nothing of the package's ``__init__`` runs and no ``physical_ai_interpretability``
  entry is left half-imported in ``sys.modules``. This works because the component files use absolute
  imports of installed libraries only (the attention mapper: ``numpy``, ``torch``, ``cv2``, ``typing``); a
  file with relative imports is refused with an error naming it.

- ``model.vision_encoder = SimpleNamespace(resnet_feature_extractor=model.backbone)`` (in
  ``attention_mapper``): the mapper runs each camera image through
  ``policy.model.vision_encoder.resnet_feature_extractor`` to learn the feature-map sizes; LeRobot 0.4.4's ACT
  holds that very module (an ``IntermediateLayerGetter`` returning ``{"feature_map": layer4}``) at
  ``model.backbone`` and has no ``vision_encoder``. A plain attribute, not a registered submodule: the
  state dict and the forward are unchanged.

Nothing else is patched: the seed's ``ACTPolicyWithAttention`` runs unchanged on LeRobot 0.4.4's ``ACTPolicy``
and its preprocessor pipeline (its ``select_action`` takes the unbatched observation dict, preprocesses it,
hooks the last decoder layer's cross-attention for one ``policy.select_action`` and resets the queue;
``nn.MultiheadAttention`` returns head-averaged weights by default, which is what it reads).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

PACKAGE = "physical_ai_interpretability"
VERSION = "0.1.4"
INSTALL = f"{sys.executable} -m pip install --no-deps physical-ai-interpretability=={VERSION}"


class SeedMissing(RuntimeError):
    """The seed package is not installed in this environment (or a different version is)."""


def package_dir() -> Path:
    """The installed seed package's folder, found without running its ``__init__``."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SeedMissing(
            f"the seed package {PACKAGE} is not installed in {sys.prefix}; install it with\n  {INSTALL}\n"
            "(or: bash scripts/install_bench.sh)"
        )
    from importlib.metadata import version

    have = version("physical-ai-interpretability")
    if have != VERSION:
        raise SeedMissing(
            f"the benchmarks measure the seed {VERSION}, but {have} is installed; install it with\n  {INSTALL}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def load_module(relative: str) -> ModuleType:
    """Run one file of the seed package (e.g. ``attention_maps/act_attention_mapper.py``) as a private module."""
    path = package_dir() / relative
    if not path.is_file():
        raise SeedMissing(f"the seed package has no {relative} (looked in {path.parent}); expected version {VERSION}")
    relative_imports = [
        n.lineno for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom) and n.level
    ]
    if relative_imports:
        raise SeedMissing(
            f"{path} has relative imports (lines {relative_imports}); it cannot be loaded without the package's "
            "__init__, which needs wandb and robocandywrapper"
        )
    name = "_pai_seed." + relative.removesuffix(".py").replace("/", ".")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def attention_mapper(policy: Any, preprocessor: Any) -> Any:
    """The seed's ``ACTPolicyWithAttention`` (``attention_maps/act_attention_mapper.py``) around a LeRobot 0.4.4
    ``ACTPolicy``: ``select_action(obs) -> (action, maps)`` on an unbatched observation dict, then
    ``visualize_attention()`` for the overlays. Give it its own policy: the shim adds an attribute to it."""
    model = policy.model
    if not hasattr(model, "vision_encoder"):
        # The mapper reads the backbone at model.vision_encoder.resnet_feature_extractor; LeRobot 0.4.4's ACT
        # has that module (the IntermediateLayerGetter returning {"feature_map": layer4}) at model.backbone.
        model.vision_encoder = SimpleNamespace(resnet_feature_extractor=model.backbone)
    return load_module("attention_maps/act_attention_mapper.py").ACTPolicyWithAttention(policy, preprocessor)


def whole_frame_sae(num_tokens: int, token_dim: int, device: str = "cpu", expansion_factor: float = 1.0) -> Any:
    """The seed's ``MultiModalSAE`` (``sae/sae.py``): one linear encoder over a whole frame's
    ``num_tokens * token_dim`` values, LeakyReLU(0.1), one linear decoder. Built as the seed's trainer builds it
    (``create_multimodal_sae``, which passes no ``activation_fn``, so the class default ``leaky_relu`` applies
    whatever the config's ``activation_fn`` says); ``feature_dim = num_tokens * token_dim * expansion_factor``
    as ``SAETrainingConfig.feature_dim`` computes it (default expansion 1). ``compute_loss(x, l1_penalty)`` is
    its MSE + L1 training loss. No shim: the file imports only torch and typing."""
    module = load_module("sae/sae.py")
    return module.create_multimodal_sae(
        num_tokens=num_tokens,
        token_dim=token_dim,
        feature_dim=int(num_tokens * token_dim * expansion_factor),
        device=device,
    )


# The seed's SAE training defaults (sae/config.py SAETrainingConfig; sae/trainer.py: Adam with weight decay,
# gradient norm clipped, constant learning rate): what bench/sae.py trains its whole-frame SAE with.
SAE_TRAINING = {
    "batch_size": 128,
    "learning_rate": 1e-4,
    "num_epochs": 20,
    "l1_penalty": 0.3,
    "weight_decay": 1e-5,
    "gradient_clip_norm": 1.0,
}
