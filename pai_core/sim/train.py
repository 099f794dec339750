"""``pai sim train-policy``: a small ACT trained on recorded episodes, on the CPU, in bounded time.

LeRobot's own pieces do the work: features from the dataset metadata, ``make_pre_post_processors``
with the dataset statistics, ``resolve_delta_timestamps`` for action chunks, the ACT optimizer preset
and ``ACTPolicy.forward`` for the loss (``--action-loss l2``: the squared error of the same chunk).
The result is a LeRobot ``pretrained_model`` folder.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigError, UsageError
from ..policy import import_lerobot_policies

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.act.configuration_act import ACTConfig
    from torch import nn


@dataclass
class TrainConfig:
    """Args:
    dataset_root: LeRobot dataset folder (from ``pai sim record``).
    output_dir: where ``pretrained_model/`` and ``training.json`` go.
    repo_id: repo id of the dataset.
    steps: optimizer steps: the same command gives the same policy.
    max_minutes: optional wall-clock budget (None: none; a clock-bounded run depends on the machine's load).
    batch_size: frames per step.
    lr: learning rate of the whole model (backbone included: nothing is pretrained).
    dim_model, n_heads, dim_feedforward, n_encoder_layers: ACT transformer size.
    chunk_size, n_action_steps: predicted and executed actions per forward pass.
    seed: torch seed.
    save_every: also save ``checkpoints/<step>/pretrained_model`` every this many steps (0: none); the
        learning rate is constant, so the checkpoint at step N is the policy ``--steps N`` gives.
    init_from: start from this ``pretrained_model`` folder (e.g. a checkpoint, to go on at a lower
        learning rate) instead of a new model; its ACT sizes are used and the size arguments ignored.
    threads: torch CPU threads.
    batch_norm: train the backbone with BatchNorm and fold its statistics into LeRobot's
        ``FrozenBatchNorm2d`` for saving (``swap_batch_norm``): a ResNet trained from scratch learns far
        faster with normalisation, and the saved model is an ordinary LeRobot ACT.
    use_vae: ACT's CVAE; off by default, as the scripted expert is deterministic.
    state_dropout: probability that a training sample's joint state is hidden (set to the dataset mean),
        so the policy cannot get by on the state alone.
    cube_position_loss: weight of an auxiliary training loss (0: off): a linear head on every decoder
        output predicts where the cube lies on the table (from each episode's seed in ``pai_sim.json``).
        Without it the ACT learned to replay the average trajectory and ignore the cube (docs/demo.md); the
        head is dropped when saving, so the saved policy is a plain LeRobot ACT.
    start_share, start_frames: draw this share of every batch from the first ``start_frames`` frames of
        the episodes. Only there must the policy find the cube from its camera alone (later the arm's own
        motion tells where it is going), and those are 2.5 % of the frames otherwise.
    action_loss: ``l1`` (LeRobot's) or ``l2``. Where the expert's first move goes either way (+1 or -1,
        by the cube's side), L1 is flat between the two and gains only by the sign; L2 pulls by the error.
    """

    dataset_root: Path
    output_dir: Path
    repo_id: str = "pai/so101_pick_cube"
    steps: int = 3000
    max_minutes: float | None = None
    batch_size: int = 16
    lr: float = 3e-4
    dim_model: int = 128
    n_heads: int = 4
    dim_feedforward: int = 512
    n_encoder_layers: int = 2
    chunk_size: int = 20
    n_action_steps: int = 10
    seed: int = 0
    save_every: int = 0
    init_from: Path | None = None
    threads: int = 2
    batch_norm: bool = True
    use_vae: bool = False
    state_dropout: float = 0.0
    cube_position_loss: float = 0.0
    action_loss: Literal["l1", "l2"] = "l1"
    start_share: float = 0.0
    start_frames: int = 8

    def __post_init__(self) -> None:
        self.dataset_root, self.output_dir = Path(self.dataset_root), Path(self.output_dir)
        if self.init_from is not None:
            self.init_from = Path(self.init_from)
            if not (self.init_from / "model.safetensors").is_file():
                raise ConfigError(f"init_from={self.init_from}: no such pretrained_model folder (model.safetensors)")
        if self.dim_model % self.n_heads:
            raise ConfigError(f"dim_model={self.dim_model} must be divisible by n_heads={self.n_heads}")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ConfigError(f"n_action_steps={self.n_action_steps} must be within 1..chunk_size ({self.chunk_size})")
        if self.save_every < 0:
            raise ConfigError(f"save_every={self.save_every} must be 0 (no checkpoints) or a number of steps")
        if self.cube_position_loss < 0:
            raise ConfigError(f"cube_position_loss={self.cube_position_loss} must be >= 0 (0: off)")
        if self.action_loss not in ("l1", "l2") or (self.action_loss == "l2" and self.use_vae):
            raise ConfigError(f"action_loss={self.action_loss!r}: expected 'l1' or 'l2' ('l2' without the CVAE)")
        if not 0.0 <= self.start_share <= 1.0 or self.start_frames < 1:
            raise ConfigError(
                f"start_share={self.start_share} must be in [0, 1] and start_frames={self.start_frames} >= 1"
            )
        if not 0.0 <= self.state_dropout <= 1.0:
            raise ConfigError(f"state_dropout={self.state_dropout} must be a probability in [0, 1]")
        if self.steps < 1 or (self.max_minutes is not None and self.max_minutes <= 0):
            raise ConfigError(f"steps={self.steps} and max_minutes={self.max_minutes} must be positive")


def act_config(cfg: TrainConfig, features: dict) -> ACTConfig:
    from lerobot.configs.types import FeatureType
    from lerobot.policies.act.configuration_act import ACTConfig

    outputs = {k: f for k, f in features.items() if f.type is FeatureType.ACTION}
    inputs = {k: f for k, f in features.items() if k not in outputs}
    return ACTConfig(
        input_features=inputs,
        output_features=outputs,
        pretrained_backbone_weights=None,
        dim_model=cfg.dim_model,
        n_heads=cfg.n_heads,
        dim_feedforward=cfg.dim_feedforward,
        n_encoder_layers=cfg.n_encoder_layers,
        n_decoder_layers=1,
        chunk_size=cfg.chunk_size,
        n_action_steps=cfg.n_action_steps,
        use_vae=cfg.use_vae,
        optimizer_lr=cfg.lr,
        optimizer_lr_backbone=cfg.lr,
        device="cpu",
    )


def train_policy(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train and save; returns the training summary (also written to ``training.json``)."""
    import torch
    from tqdm import tqdm

    import_lerobot_policies()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from lerobot.datasets.utils import dataset_to_policy_features
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    try:
        meta = LeRobotDatasetMetadata(cfg.repo_id, root=cfg.dataset_root)
    except Exception as exc:
        raise UsageError(f"Could not open LeRobot dataset {cfg.repo_id!r} at {cfg.dataset_root}: {exc}") from exc
    policy_cfg = act_config(cfg, dataset_to_policy_features(meta.features))
    dataset = LeRobotDataset(cfg.repo_id, root=cfg.dataset_root)
    frames = EpisodeFrames.load(dataset, progress)
    if cfg.cube_position_loss:
        frames.cube = cube_targets(cfg.dataset_root, frames)
    if cfg.start_share:
        frames.focus_on_start(cfg.start_frames, cfg.start_share)
    if frames.size < cfg.batch_size:
        raise UsageError(f"Dataset {cfg.dataset_root} has {frames.size} frames, fewer than batch_size={cfg.batch_size}")
    if cfg.init_from is not None:
        policy = ACTPolicy.from_pretrained(cfg.init_from)
        policy_cfg = policy.config
        policy_cfg.optimizer_lr = policy_cfg.optimizer_lr_backbone = cfg.lr
    else:
        policy = ACTPolicy(policy_cfg)
    if cfg.batch_norm:
        swap_batch_norm(policy.model.backbone, trainable=True)
    policy.train()
    stats = with_image_stats(meta.stats, frames)
    pre, post = make_pre_post_processors(policy_cfg, dataset_stats=stats)
    optim_cfg = policy_cfg.get_optimizer_preset()
    optimizer = optim_cfg.build(policy.get_optim_params())
    cube_head = CubePositionHead(policy, optimizer) if cfg.cube_position_loss else None
    generator = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    deadline = math.inf if cfg.max_minutes is None else start + cfg.max_minutes * 60.0
    losses: list[float] = []
    cube_losses: list[float] = []  # the auxiliary loss alone (unweighted), when on
    step = 0
    stopped_by = "steps"
    bar = tqdm(total=cfg.steps, desc="train ACT", unit="step", disable=not progress)
    while step < cfg.steps:
        if time.perf_counter() > deadline:
            stopped_by = "max_minutes"
            break
        sample = frames.batch(cfg.batch_size, policy_cfg.chunk_size, generator)
        cube = sample.pop("cube", None)
        batch = pre(sample)
        if cfg.state_dropout:
            hidden = torch.rand(cfg.batch_size, generator=generator) < cfg.state_dropout
            batch["observation.state"][hidden] = 0.0  # normalised: the dataset mean
        loss = action_loss(policy, batch) if cfg.action_loss == "l2" else policy.forward(batch)[0]
        losses.append(float(loss.detach()))
        if cube_head is not None:
            cube_loss = cube_head.loss(cube)
            cube_losses.append(float(cube_loss.detach()))
            loss = loss + cfg.cube_position_loss * cube_loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), optim_cfg.grad_clip_norm)
        optimizer.step()
        step += 1
        bar.update(1)
        if step % 10 == 0:
            shown = {"loss": f"{sum(losses[-10:]) / 10:.3f}"}
            if cube_losses:
                shown["cube"] = f"{sum(cube_losses[-10:]) / 10:.3f}"
            bar.set_postfix(shown)
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            if cube_head is not None:
                cube_head.remove()  # the hook holds the graph of this step, which cannot be copied
            save_policy(
                copy.deepcopy(policy), pre, post, cfg.output_dir / "checkpoints" / f"{step:06d}", cfg.batch_norm
            )
            if cube_head is not None:
                cube_head.attach(policy)
    bar.close()
    if cube_head is not None:
        cube_head.remove()
    out = save_policy(policy, pre, post, cfg.output_dir, cfg.batch_norm)
    summary = {
        "policy_path": str(out),
        "steps": step,
        "stopped_by": stopped_by,
        "seconds": round(time.perf_counter() - start, 1),
        "frames": frames.size,
        "episodes": meta.total_episodes,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
    }
    if cube_losses:
        summary["final_cube_position_loss"] = sum(cube_losses[-20:]) / len(cube_losses[-20:])
    (cfg.output_dir / "training.json").write_text(
        json.dumps({**summary, "losses": losses, "cube_position_losses": cube_losses}, indent=2)
    )
    plot_losses(
        losses,
        cfg.output_dir / "training_loss.png",
        "ACT loss (L2)" if cfg.action_loss == "l2" else "ACT loss (L1 + KL)",
    )
    return summary


def action_loss(policy: Any, batch: dict) -> torch.Tensor:
    """Mean squared error of ACT's predicted chunk (no CVAE), past-the-end steps masked as in LeRobot's L1."""
    from lerobot.utils.constants import ACTION, OBS_IMAGES

    batch = dict(batch)
    batch[OBS_IMAGES] = [batch[key] for key in policy.config.image_features]  # as ACTPolicy.forward does
    actions_hat, _ = policy.model(batch)
    return ((actions_hat - batch[ACTION]) ** 2 * ~batch["action_is_pad"].unsqueeze(-1)).mean()


def with_image_stats(stats: dict[str, dict[str, Any]], frames: EpisodeFrames) -> dict[str, dict[str, Any]]:
    """``stats`` with each camera's per-channel mean and std measured on ``frames`` (every pixel, in [0, 1]).

    LeRobot 0.4.4 computes image statistics on the uint8 frames (``compute_stats.get_feature_stats``), where
    the variance truncates to 0; the aggregated std of a dataset is then only the spread of its episodes'
    mean colours (0.003-0.006 for the demo's frames, whose true std is 0.09-0.20). Normalised with it, the
    images reach the backbone about 30 times too large. The policy's preprocessor saves these statistics, so
    inference normalises the same way."""
    import numpy as np

    out = {key: dict(value) for key, value in stats.items()}
    for cam, images in frames.images.items():
        pixels = images.permute(1, 0, 2, 3).reshape(images.shape[1], -1)  # (3, N*H*W) uint8
        total = np.zeros(pixels.shape[0])
        squares = np.zeros(pixels.shape[0])
        for part in pixels.split(1 << 24, dim=1):  # float64 sums in slices: exact enough, bounded memory
            values = part.double().div_(255.0)
            total += values.sum(dim=1).numpy()
            squares += values.square().sum(dim=1).numpy()
        n = pixels.shape[1]
        mean = total / n
        std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
        old = np.asarray(out.get(cam, {}).get("std", std)).reshape(-1)
        if not np.allclose(old, std, rtol=0.5):
            log.warning(
                "%s: image std in the dataset statistics is %s, measured %s: training with the measured one",
                cam,
                np.round(old, 4).tolist(),
                np.round(std, 4).tolist(),
            )
        out.setdefault(cam, {})
        out[cam]["mean"] = mean.reshape(-1, 1, 1).astype(np.float32)
        out[cam]["std"] = std.reshape(-1, 1, 1).astype(np.float32)
    return out


def save_policy(policy: Any, pre: Any, post: Any, folder: Path, batch_norm: bool) -> Path:
    """Write ``folder/pretrained_model`` (an ordinary LeRobot ACT: trained BatchNorm folded into
    ``FrozenBatchNorm2d``); ``policy`` is changed in place, so pass a copy mid-training."""
    policy.eval()
    if batch_norm:
        swap_batch_norm(policy.model.backbone, trainable=False)
    out = folder / "pretrained_model"
    out.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return out


def swap_batch_norm(module: nn.Module, trainable: bool) -> None:
    """Replace every ``FrozenBatchNorm2d`` under ``module`` by a trainable ``BatchNorm2d``
    (``trainable=True``) or fold ``BatchNorm2d`` back into ``FrozenBatchNorm2d`` (``False``).

    Folding is exact: in eval mode BatchNorm computes ``(x - running_mean) / sqrt(running_var + eps)
    * weight + bias``, which is what ``FrozenBatchNorm2d`` computes from the same four tensors.
    """
    import torch
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in list(module.named_children()):
        if trainable and isinstance(child, FrozenBatchNorm2d):
            new = torch.nn.BatchNorm2d(child.weight.numel(), eps=child.eps)
        elif not trainable and isinstance(child, torch.nn.BatchNorm2d):
            new = FrozenBatchNorm2d(child.num_features, eps=child.eps)
        else:
            swap_batch_norm(child, trainable)
            continue
        with torch.no_grad():
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(new, key).copy_(getattr(child, key))
        setattr(module, name, new.to(child.weight.device))


class EpisodeFrames:
    """A small recorded dataset held in memory, sampled into ACT training batches.

    Reading frames one by one through ``LeRobotDataset.__getitem__`` with action-chunk delta timestamps
    costs more than the training step itself on a small CPU; a few thousand 96x128 frames fit in memory,
    so they are decoded once. Batches have the layout LeRobot's dataloader produces: images (B, 3, H, W)
    in [0, 1], ``action`` (B, chunk, A) and ``action_is_pad`` (B, chunk) past an episode's end.
    """

    def __init__(
        self, images: dict[str, torch.Tensor], state: torch.Tensor, action: torch.Tensor, episode_end: torch.Tensor
    ):
        self.images, self.state, self.action, self.episode_end = images, state, action, episode_end
        self.size = int(action.shape[0])
        self.cube: torch.Tensor | None = None  # (N, 2) auxiliary target per frame (``cube_targets``)
        self.start: torch.Tensor | None = None  # indices of the episodes' first frames (``focus_on_start``)
        self.start_share = 0.0

    def focus_on_start(self, frames: int, share: float) -> None:
        """Draw ``share`` of every batch from the first ``frames`` frames of the episodes."""
        import torch

        ends, counts = torch.unique_consecutive(self.episode_end, return_counts=True)
        starts = ends - counts
        self.start = torch.cat([torch.arange(s, s + min(frames, c)) for s, c in zip(starts.tolist(), counts.tolist())])
        self.start_share = share

    @classmethod
    def load(cls, dataset: LeRobotDataset, progress: bool = True) -> EpisodeFrames:
        import torch
        from tqdm import tqdm

        cams = list(dataset.meta.camera_keys)
        images: dict[str, list[torch.Tensor]] = {k: [] for k in cams}
        state, action, ends = [], [], []
        for ep in tqdm(range(dataset.meta.total_episodes), desc="load episodes", unit="ep", disable=not progress):
            info = dataset.meta.episodes[ep]
            lo, hi = int(info["dataset_from_index"]), int(info["dataset_to_index"])
            rows = dataset.hf_dataset[lo:hi]
            for k in cams:
                images[k].append(torch.stack([(img * 255).round().to(torch.uint8) for img in rows[k]]))
            state.append(torch.stack(list(rows["observation.state"])))
            action.append(torch.stack(list(rows["action"])))
            ends.append(torch.full((hi - lo,), hi, dtype=torch.long))
        return cls({k: torch.cat(v) for k, v in images.items()}, torch.cat(state), torch.cat(action), torch.cat(ends))

    def batch(self, batch_size: int, chunk: int, generator: torch.Generator) -> dict:
        import torch

        idx = torch.randint(0, self.size, (batch_size,), generator=generator)
        if self.start is not None:
            n = round(batch_size * self.start_share)
            idx[:n] = self.start[torch.randint(0, len(self.start), (n,), generator=generator)]
        steps = idx[:, None] + torch.arange(chunk)[None]
        pad = steps >= self.episode_end[idx][:, None]
        steps = torch.minimum(steps, self.episode_end[idx][:, None] - 1)
        out = {k: v[idx].float().div_(255.0) for k, v in self.images.items()}
        out["observation.state"] = self.state[idx]
        out["action"] = self.action[steps]
        out["action_is_pad"] = pad
        if self.cube is not None:
            out["cube"] = self.cube[idx]
        return out


def cube_targets(root: Path, frames: EpisodeFrames) -> torch.Tensor:
    """(N, 2) where each frame's cube lies on the table, scaled to [-1, 1] over the sampling box: the position
    ``PickCubeSim.reset`` draws from the episode's seed (the cube only rises when lifted, so x, y hold)."""
    import numpy as np
    import torch

    from .env import BLOCK_XY_BOUNDS, cube_xy
    from .record import load_summary

    try:
        seeds = {int(e["episode_index"]): int(e["seed"]) for e in load_summary(root)["episodes"]}
    except (OSError, KeyError, ValueError) as exc:
        raise UsageError(f"cube_position_loss needs {root}/pai_sim.json from `pai sim record`: {exc}") from exc
    _, frames_per_episode = torch.unique_consecutive(frames.episode_end, return_counts=True)
    lo, hi = BLOCK_XY_BOUNDS
    out = []
    for ep, count in enumerate(frames_per_episode.tolist()):
        if ep not in seeds:
            raise UsageError(f"{root}/pai_sim.json has no seed for episode {ep}")
        xy = cube_xy(np.random.default_rng(seeds[ep]))
        out.append(torch.tensor(2 * (xy - lo) / (hi - lo) - 1, dtype=torch.float32).expand(count, 2))
    return torch.cat(out)


class CubePositionHead:
    """Training-only linear head on the inputs of ACT's action head, (B, chunk, D) -> (B, chunk, 2), read
    through a forward hook; its parameters join ``optimizer``."""

    def __init__(self, policy: Any, optimizer: torch.optim.Optimizer):
        import torch

        self.head = torch.nn.Linear(policy.config.dim_model, 2)
        optimizer.add_param_group({"params": list(self.head.parameters())})
        self._features: torch.Tensor | None = None
        self.attach(policy)

    def attach(self, policy: Any) -> None:
        self._hook = policy.model.action_head.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._features = inputs[0]

    def loss(self, target: torch.Tensor) -> torch.Tensor:
        """L1 between every decoder output's predicted cube position and ``target`` (B, 2)."""
        assert self._features is not None, "call after policy.forward"
        pred = self.head(self._features)
        return (pred - target[:, None, :]).abs().mean()

    def remove(self) -> None:
        self._hook.remove()
        self._features = None


def plot_losses(losses: list[float], path: Path, label: str = "ACT loss (L1 + KL)") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(losses, lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.set_title("policy training")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
