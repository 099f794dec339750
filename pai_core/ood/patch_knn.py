"""``patch_knn``: a local, state-conditioned OOD score on the policy's own vision features.

Each camera image becomes a grid of patches: the backbone's early feature maps (ACT: ResNet layer1 and layer2,
captured by the adapter in the same forward pass) resized to one grid, averaged over 3x3 patches and
standardised per channel. A frame is compared with the ``k_frames`` clean reference frames whose joint
state is closest: where the arm is, it looks the same in those frames, so each patch should find a
near twin within ``neighbourhood`` patches of its own place. Per patch, the distance to that twin is
standardised by its typical value on clean frames (leave-one-episode-out on the reference), which makes
a shifted camera stand out where the background is normally static; the frame score is the larger of
the highest standardised and the highest raw patch distance, each divided by its 99th percentile on
clean frames, over all cameras. Small local changes (a differently coloured cube, a distractor, an
occluder) and global ones (lighting, camera pose) both raise it, and the per-patch map shows where.

Measured on the SO-101 demo (docs/demo.md, docs/ood_bench.md): AUROC 0.999-1.0 for all six perturbations,
where the frame-level ``token_knn`` reached 0.49-0.998 and the SAE reconstruction error 0.41-0.76.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError
from .params import OODParams
from .registry import register
from .scorer import FitJob, Fitted, Scale, ScoreBatch, ScoreOutput

REFERENCE_FILE = "ood_reference.safetensors"

PAD = 1e3  # feature value outside the image: no patch is ever matched there
QUANTILE = 0.99
COVERAGE_QUANTILE = 0.9
Array = torch.Tensor | np.ndarray  # what the constructors take: a saved (memory-mapped) tensor or numpy
CHUNK = 64  # frames standardised or probed at a time (bounds the float32 temporaries)
SEARCH_CHUNK = 8192  # reference frames per block of the joint-state search (bounds its (B, chunk) distances)


@dataclass
class PatchKnnConfig:
    """Args:
    k_frames: clean reference frames (nearest in joint state) each frame is compared with.
    neighbourhood: a patch may match reference patches this many grid cells wide around its place (odd).
    max_grid: the patch grid is at most this size (rows, columns); finer feature maps are averaged down.
    coverage_margin: a frame's joint state is covered when its distance to the nearest reference state is
        at most this many times the reference's own spacing (the 90th percentile of each reference frame's
        distance to the nearest frame of another episode; a high quantile would let the states that only
        one episode visits, which are what coverage must find, set the scale).
    """

    k_frames: int = 32
    neighbourhood: int = 3
    max_grid: tuple[int, int] = (24, 32)
    coverage_margin: float = 3.0

    def __post_init__(self) -> None:
        if self.k_frames < 1 or self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise ValueError(f"k_frames={self.k_frames} must be >= 1 and neighbourhood={self.neighbourhood} odd")
        if not self.coverage_margin > 0:
            raise ValueError(f"coverage_margin={self.coverage_margin} must be > 0")


class PatchScores(NamedTuple):
    """What ``PatchKnnScorer.score`` gives for a batch of B frames.

    scores: (B,) frame scores; maps: camera -> (B, H, W) standardised patch distances; coverage: (B,)
    distance of each frame's joint state to the nearest reference state over the coverage radius (which
    includes ``coverage_margin``; above 1 the reference does not cover that state and the score there is
    not trusted)."""

    scores: np.ndarray
    maps: dict[str, np.ndarray]
    coverage: np.ndarray


def patch_grid(maps: list[torch.Tensor], max_grid: tuple[int, int]) -> torch.Tensor:
    """Backbone feature maps [(B, C_i, h_i, w_i), ...] -> (B, sum C_i, H, W) patch features on the grid of
    the middle map (at most ``max_grid``), each averaged over its 3x3 neighbourhood."""
    ref = maps[len(maps) // 2].shape[-2:]
    size = (min(ref[0], max_grid[0]), min(ref[1], max_grid[1]))
    parts = []
    for m in maps:
        m = m.float()
        if m.shape[-2] >= size[0] and m.shape[-1] >= size[1]:
            parts.append(F.adaptive_avg_pool2d(m, size))
        else:
            parts.append(F.interpolate(m, size=size, mode="bilinear", align_corners=False))
    return F.avg_pool2d(torch.cat(parts, 1), 3, 1, 1, count_include_pad=False)


class CameraReference:
    """One camera's clean reference patches and the statistics that turn distances into a score.

    ``patches`` (N, C, H, W) float16, standardised per channel; on the CPU usually a memory map of the
    saved file, so a node's resident memory does not grow with the reference."""

    def __init__(
        self,
        patches: Array,
        channel_mean: Array,
        channel_std: Array,
        patch_mean: Array | None = None,
        patch_std: Array | None = None,
        q_z: float = 1.0,
        q_raw: float = 1.0,
    ):
        self.patches = torch.as_tensor(patches)
        if self.patches.dtype != torch.float16:
            self.patches = self.patches.half()
        self.channel_mean = torch.as_tensor(channel_mean).float()  # (C, 1, 1)
        self.channel_std = torch.as_tensor(channel_std).float()
        self.patch_mean = None if patch_mean is None else torch.as_tensor(patch_mean).float()  # (H, W)
        self.patch_std = None if patch_std is None else torch.as_tensor(patch_std).float()
        self.q_z, self.q_raw = float(q_z), float(q_raw)

    def to(self, device: torch.device | str) -> CameraReference:
        for key in ("patches", "channel_mean", "channel_std", "patch_mean", "patch_std"):
            setattr(self, key, getattr(self, key).to(device))
        return self

    def patch_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(H, W) clean per-patch distance mean and spread; ``ReferenceBuilder.finish`` measures them."""
        if self.patch_mean is None or self.patch_std is None:
            raise ModelError(
                "patch_knn camera reference has no per-patch statistics (ReferenceBuilder.finish sets them)"
            )
        return self.patch_mean, self.patch_std

    def standardise(self, grid: torch.Tensor) -> torch.Tensor:
        return (grid.float() - self.channel_mean) / self.channel_std

    def distances(self, grid: torch.Tensor, neighbours: torch.Tensor, nb: int) -> torch.Tensor:
        """(B, C, H, W) standardised patches, (B, K) reference frame indices -> (B, H, W) distance of each
        patch to its nearest reference patch within ``nb`` x ``nb`` cells."""
        r = nb // 2
        out = torch.empty(grid.shape[0], *grid.shape[-2:], device=grid.device)
        for i in range(grid.shape[0]):
            bank = F.pad(self.patches[neighbours[i]].to(grid.device).float(), (r, r, r, r), value=PAD)
            h, w = grid.shape[-2:]
            best: torch.Tensor | None = None
            for dy in range(nb):
                for dx in range(nb):
                    d = (bank[:, :, dy : dy + h, dx : dx + w] - grid[i]).pow_(2).sum(1).amin(0)
                    best = d if best is None else torch.minimum(best, d)
            assert best is not None  # nb >= 1
            out[i] = best.sqrt_()
        return out

    def score(self, dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W) distances -> (B,) camera score and (B, H, W) standardised map."""
        mean, std = self.patch_stats()
        z = (dist - mean) / std
        frame = torch.maximum(z.flatten(1).amax(1) / self.q_z, dist.flatten(1).amax(1) / self.q_raw)
        return frame, z


@register
class PatchKnnScorer:
    """``patch_knn`` (module docstring). Build with ``ReferenceBuilder`` (or ``from_grids``) from clean
    reference frames, save beside ``ood_params.json``; ``score_maps`` scores backbone maps and joint states."""

    name: ClassVar[str] = "patch_knn"
    description: ClassVar[str] = (
        "largest distance of the frame's backbone patches to those of clean frames in the nearest joint states"
    )
    needs_vision_features: ClassVar[bool] = True

    def __init__(
        self,
        cameras: dict[str, CameraReference],
        states: Array,
        state_mean: Array,
        state_std: Array,
        episodes: Array,
        config: PatchKnnConfig | None = None,
        coverage_radius: float = float("inf"),
        memory_mapped: bool = False,
        search_chunk: int | None = SEARCH_CHUNK,
    ):
        self.cameras = cameras
        self.states = torch.as_tensor(states).float()  # (N, S) standardised
        self.state_mean = torch.as_tensor(state_mean).float()
        self.state_std = torch.as_tensor(state_std).float()
        self.episodes = torch.as_tensor(episodes).long()
        self.config = config or PatchKnnConfig()
        self.coverage_radius = float(coverage_radius)
        self.memory_mapped = memory_mapped
        self.search_chunk = search_chunk  # reference frames per block of ``nearest_states`` (None: one block)
        self.leave_out: int | None = None  # episode whose frames are not neighbours (``leaving_out``)
        self.summary: dict = {}  # how the reference was made (budget, episodes), saved into ood_params.json

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, job: FitJob) -> Fitted:
        """The reference episodes' patch grids within the memory budget (``reference.fit_patch_reference``).
        When the calibration episodes are in the reference, each is scored with its own frames left out."""
        from .reference import fit_patch_reference

        if job.reference is None:
            raise ValueError("patch_knn is fitted on reference episodes; the fit job names none")
        ref, episodes = job.reference
        o = job.options
        scorer, summary = fit_patch_reference(
            job.pipe,
            ref,
            episodes,
            PatchKnnConfig(k_frames=o.get("knn_k") or 32),
            o.get("max_bytes"),
            o.get("stride", 1),
            job.batch_size,
            o.get("nuisance_variants", 0),
        )
        leave_out = ref is job.dataset and bool(set(episodes) & set(job.episodes))
        scorer.summary = summary | {"episodes": list(episodes), "leave_own_episode_out": leave_out}
        return Fitted(scorer, list(job.episodes), leave_out)

    @classmethod
    def from_grids(
        cls,
        grids: dict[str, torch.Tensor],
        states: np.ndarray,
        episodes: np.ndarray,
        config: PatchKnnConfig | None = None,
        max_stat_frames: int = 1000,
    ) -> PatchKnnScorer:
        """grids: camera -> (N, C, H, W) ``patch_grid`` of N clean reference frames; states (N, S) joint
        states; episodes (N,) episode ids (at least two episodes). In-memory convenience over
        ``ReferenceBuilder``."""
        builder = ReferenceBuilder(len(episodes), config)
        builder.add(grids, states, episodes)
        return builder.finish(max_stat_frames)

    @property
    def n_frames(self) -> int:
        return int(self.episodes.numel())

    @property
    def nbytes(self) -> int:
        """Bytes of the reference patches (what a budget limits)."""
        return sum(ref.patches.numel() * ref.patches.element_size() for ref in self.cameras.values())

    def describe(self) -> dict:
        """Size and placement of the reference, for diagnostics and reports."""
        device = next(iter(self.cameras.values())).patches.device
        return {
            "frames": self.n_frames,
            "episodes": int(self.episodes.unique().numel()),
            "size_mb": round(self.nbytes / 1e6, 1),
            "device": str(device),
            "memory_mapped": bool(self.memory_mapped and device.type == "cpu"),
            "coverage_radius": round(self.coverage_radius, 4),
        }

    def _nearest(self, states: torch.Tensor, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) standardised states -> (B, K) indices of the nearest reference frames and (B,) distance to
        the nearest (frames of the query's own episode left out when ``exclude`` gives each one's episode)."""
        k = min(self.config.k_frames, len(self.states))
        if exclude is not None:  # never a left-out frame as a neighbour
            k = min(k, len(self.states) - int((self.episodes[None] == exclude.unique()[:, None]).sum(1).max()))
            if k < 1:
                raise ModelError("patch_knn: leaving the frame's own episode out leaves no reference frame")
        indices, distances = nearest_states(states, self.states, k, self.search_chunk, exclude, self.episodes)
        return indices, distances[:, 0]

    def reset(self) -> None:
        pass

    @contextmanager
    def leaving_out(self, episode: int | None) -> Iterator[PatchKnnScorer]:
        """Score with the frames of reference ``episode`` left out (calibrating on episodes that are also
        in the reference: each is judged against the others, as a new episode would be)."""
        before, self.leave_out = self.leave_out, episode
        try:
            yield self
        finally:
            self.leave_out = before

    # ------------------------------------------------------------------ scoring
    def score(self, batch: ScoreBatch) -> ScoreOutput:
        from ..pipeline import vision_batch

        scores, maps, coverage = self.score_maps(*vision_batch(batch.results, batch.observations))
        return ScoreOutput(scores, [{cam: m[i] for cam, m in maps.items()} for i in range(len(scores))], coverage)

    def map_scale(self, threshold: float) -> dict[str, Scale] | None:
        """The maps are per-patch standardised distances z (about 0 on clean patches). A camera's frame score
        includes max z / q_z, so one patch at z = threshold * q_z alone lifts the score to the threshold:
        full heat there, per camera; z <= 0 untinted."""
        scale = {cam: (0.0, threshold * ref.q_z) for cam, ref in self.cameras.items()}
        return scale if all(high > 0 for _, high in scale.values()) else None

    def score_maps(self, maps: dict[str, list[torch.Tensor]], states: Array | None) -> PatchScores:
        """maps: camera -> backbone maps [(B, C_i, h_i, w_i)]; states: (B, S) joint states."""
        missing = sorted(set(self.cameras) - set(maps))
        if missing:
            raise ModelError(f"patch_knn reference has cameras {sorted(self.cameras)} but the frame lacks {missing}")
        first = next(iter(maps.values()))[0]
        self.to(first.device)  # score where the policy runs (a GPU keeps the node's latency low)
        states = _states(states, len(first)).to(first.device)
        if states.shape[1] != self.states.shape[1]:
            raise ModelError(
                f"patch_knn reference states have {self.states.shape[1]} values, the frame {states.shape[1]}"
            )
        exclude = None
        if self.leave_out is not None:
            exclude = torch.full((len(states),), int(self.leave_out), device=states.device)
        neighbours, nearest = self._nearest((states - self.state_mean) / self.state_std, exclude)
        total: torch.Tensor | None = None
        out_maps = {}
        for cam, ref in self.cameras.items():
            grid = patch_grid([m.detach() for m in maps[cam]], self.config.max_grid)
            if grid.shape[1:] != ref.patches.shape[1:]:
                raise ModelError(
                    f"patch_knn reference for {cam} has patches {tuple(ref.patches.shape[1:])} but the "
                    f"frame gives {tuple(grid.shape[1:])}; recalibrate with `pai calibrate-ood --score patch_knn`"
                )
            frame, z = ref.score(ref.distances(ref.standardise(grid), neighbours, self.config.neighbourhood))
            total = frame if total is None else torch.maximum(total, frame)
            out_maps[cam] = z.cpu().numpy()
        coverage = (nearest / self.coverage_radius).cpu().numpy().astype(np.float64)
        assert total is not None  # a reference has at least one camera
        return PatchScores(total.cpu().numpy().astype(np.float64), out_maps, coverage)

    def to(self, device: torch.device | str) -> PatchKnnScorer:
        """Move the reference to ``device`` (a GPU keeps it in device memory; on the CPU it stays mapped)."""
        device = torch.device(device)
        if self.states.device != device:
            for key in ("states", "state_mean", "state_std", "episodes"):
                setattr(self, key, getattr(self, key).to(device))
            for ref in self.cameras.values():
                ref.to(device)
        return self

    # ------------------------------------------------------------------ files
    def save(self, folder: Path) -> dict:
        self.save_file(Path(folder) / REFERENCE_FILE)
        return {"reference": REFERENCE_FILE, "reference_summary": self.summary | self.describe()}

    @classmethod
    def load(cls, params: OODParams) -> PatchKnnScorer:
        return cls.load_file(params.reference_path)

    def save_file(self, path: str | Path) -> Path:
        """One safetensors file; the patches are written a camera at a time from their float16 storage."""
        from safetensors.torch import save_file

        c = self.config
        tensors = {
            "states": self.states,
            "state_mean": self.state_mean,
            "state_std": self.state_std,
            "episodes": self.episodes,
            "config": torch.tensor([c.k_frames, c.neighbourhood, *c.max_grid], dtype=torch.long),
            "coverage": torch.tensor([self.coverage_radius, c.coverage_margin], dtype=torch.float64),
        }
        for cam, ref in self.cameras.items():
            patch_mean, patch_std = ref.patch_stats()
            tensors |= {
                f"{cam}/patches": ref.patches,
                f"{cam}/channel_mean": ref.channel_mean,
                f"{cam}/channel_std": ref.channel_std,
                f"{cam}/patch_mean": patch_mean,
                f"{cam}/patch_std": patch_std,
                f"{cam}/q": torch.tensor([ref.q_z, ref.q_raw]),
            }
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
        return Path(path)

    @classmethod
    def load_file(cls, path: str | Path, mmap: bool = True) -> PatchKnnScorer:
        """Load a saved reference. safetensors maps the file (pages are read on demand and belong to the page
        cache, so a node's own memory does not grow with the reference); without ``mmap`` it is copied
        into memory."""
        from safetensors.torch import load_file

        try:
            t = load_file(str(path))
            if not mmap:
                t = {k: v.clone() for k, v in t.items()}
            k, nb, gh, gw = (int(v) for v in t["config"])
            radius, margin = (float(v) for v in t["coverage"]) if "coverage" in t else (float("inf"), 3.0)
            cams = sorted({key.rsplit("/", 1)[0] for key in t if key.endswith("/patches")})
            refs = {
                cam: CameraReference(
                    t[f"{cam}/patches"],
                    t[f"{cam}/channel_mean"],
                    t[f"{cam}/channel_std"],
                    t[f"{cam}/patch_mean"],
                    t[f"{cam}/patch_std"],
                    *t[f"{cam}/q"].tolist(),
                )
                for cam in cams
            }
            return cls(
                refs,
                t["states"],
                t["state_mean"],
                t["state_std"],
                t["episodes"],
                PatchKnnConfig(k, nb, (gh, gw), margin),
                radius,
                memory_mapped=mmap,
            )
        except Exception as exc:
            raise ModelError(f"Could not load the patch_knn reference {path}: {exc}") from exc


class ReferenceBuilder:
    """Streams clean reference frames into preallocated float16 storage, so fitting a reference of N
    frames needs about the size of its file in memory (plus one batch), not a float32 copy per step.

    ``add`` takes each batch's patch grids as they come from the engine; ``finish`` standardises the
    storage in place (per-channel mean and spread accumulated on the way), measures the per-patch
    leave-one-episode-out statistics and the joint-state coverage radius, and returns the scorer."""

    def __init__(self, n_frames: int, config: PatchKnnConfig | None = None):
        if n_frames < 1:
            raise ValueError(f"a patch_knn reference needs at least one frame, got {n_frames}")
        self.n_frames = n_frames
        self.config = config or PatchKnnConfig()
        self.patches: dict[str, torch.Tensor] = {}
        self._sums: dict[str, torch.Tensor] = {}
        self._squares: dict[str, torch.Tensor] = {}
        self.states: np.ndarray | None = None
        self.episodes = np.full(n_frames, -1, np.int64)
        self.filled = 0

    def add(self, grids: dict[str, torch.Tensor], states: Array | None, episodes: Array | int) -> None:
        """grids: camera -> (B, C, H, W) ``patch_grid`` of B frames; states (B, S) or None; episodes (B,)
        ids or one id for the whole batch."""
        b = len(next(iter(grids.values())))
        if self.filled + b > self.n_frames:
            raise ValueError(f"the reference was sized for {self.n_frames} frames; {self.filled + b} were added")
        sl = slice(self.filled, self.filled + b)
        for cam, grid in grids.items():
            grid = grid.detach().float().cpu()
            if not torch.isfinite(grid).all():
                raise ValueError(f"camera {cam}: the backbone features of the reference frames are not finite")
            if cam not in self.patches:
                self.patches[cam] = torch.empty((self.n_frames, *grid.shape[1:]), dtype=torch.float16)
                self._sums[cam] = torch.zeros(grid.shape[1], dtype=torch.float64)
                self._squares[cam] = torch.zeros(grid.shape[1], dtype=torch.float64)
            half = grid.half()
            if not torch.isfinite(half).all():
                raise ValueError(f"camera {cam}: backbone features exceed the float16 range of the reference")
            self.patches[cam][sl] = half
            self._sums[cam] += grid.double().sum((0, 2, 3))
            self._squares[cam] += grid.double().pow(2).sum((0, 2, 3))
        s = _states(states, b).numpy()
        if self.states is None:
            self.states = np.zeros((self.n_frames, s.shape[1]), np.float32)
        self.states[sl] = s
        self.episodes[sl] = np.broadcast_to(np.asarray(episodes, np.int64), (b,))
        self.filled += b

    def finish(self, max_stat_frames: int = 1000) -> PatchKnnScorer:
        config = self.config
        if self.filled != self.n_frames:
            raise ValueError(f"the reference was sized for {self.n_frames} frames but {self.filled} were added")
        episodes = self.episodes
        if len(np.unique(episodes)) < 2:
            raise ValueError("patch_knn needs reference frames from at least two episodes")
        states = torch.from_numpy(self.states)
        s_mean, s_std = states.mean(0), states.std(0, unbiased=False) + 1e-6
        refs = {}
        for cam, patches in self.patches.items():
            count = patches.shape[0] * patches.shape[2] * patches.shape[3]
            mean = self._sums[cam] / count
            std = (self._squares[cam] / count - mean.pow(2)).clamp_min(0).sqrt()
            mean, std = mean.float()[:, None, None], std.float()[:, None, None] + 1e-6
            for i in range(0, patches.shape[0], CHUNK):  # in place, a chunk at a time
                patches[i : i + CHUNK] = ((patches[i : i + CHUNK].float() - mean) / std).half()
            refs[cam] = CameraReference(patches, mean, std)
        scorer = PatchKnnScorer(refs, (states - s_mean) / s_std, s_mean, s_std, episodes, config)
        # leave-one-episode-out on (a subsample of) the reference frames: per-patch statistics and coverage
        probe = np.linspace(0, len(episodes) - 1, min(max_stat_frames, len(episodes))).round().astype(int)
        probe_t = torch.from_numpy(probe)
        neighbours, _ = scorer._nearest(scorer.states[probe_t], exclude=scorer.episodes[probe_t])
        for ref in refs.values():
            dist = torch.cat(
                [
                    ref.distances(
                        ref.patches[probe_t[i : i + CHUNK]].float(), neighbours[i : i + CHUNK], config.neighbourhood
                    )
                    for i in range(0, len(probe), CHUNK)
                ]
            )
            ref.patch_mean, ref.patch_std = dist.mean(0), dist.std(0) + 1e-6
            z = (dist - ref.patch_mean) / ref.patch_std
            ref.q_z = float(torch.quantile(z.flatten(1).amax(1), QUANTILE))
            ref.q_raw = float(torch.quantile(dist.flatten(1).amax(1), QUANTILE))
        scorer.coverage_radius = coverage_radius(scorer.states, scorer.episodes) * config.coverage_margin
        return scorer


def nearest_states(
    queries: torch.Tensor,
    reference: torch.Tensor,
    k: int,
    chunk: int | None = SEARCH_CHUNK,
    query_episodes: torch.Tensor | None = None,
    reference_episodes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest reference states of each query, searched ``chunk`` reference frames at a time.

    Args:
        queries: (B, S) states; reference: (N, S) states, on the same device.
        chunk: reference frames per block: the distances held at once are (B, chunk + k) instead of (B, N)
            (None: one block). The result does not depend on it: pairwise distances are computed without
            the matrix-product shortcut (whose rounding depends on the block's shape) and ties are broken
            by the lower reference index, in every block and in the merge.
        query_episodes, reference_episodes: (B,), (N,) episode ids; reference frames of the query's own
            episode are never neighbours (their distance is inf).
    Returns:
        (B, k) reference indices and (B, k) distances, nearest first.
    """
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1 (or None for one block)")
    if query_episodes is not None and reference_episodes is None:
        raise ValueError("query_episodes needs reference_episodes (the reference frames' episode ids)")
    n = len(reference)
    step = n if chunk is None else chunk
    best_d: torch.Tensor | None = None  # (B, k) so far
    best_i: torch.Tensor | None = None  # (B, k) so far, kept in reference order so that ties resolve by index
    for start in range(0, n, step):
        block = reference[start : start + step]
        d = torch.cdist(queries, block, compute_mode="donot_use_mm_for_euclid_dist")
        if query_episodes is not None and reference_episodes is not None:
            d[query_episodes[:, None] == reference_episodes[None, start : start + step]] = float("inf")
        idx = torch.arange(start, start + len(block), device=d.device).expand(len(queries), -1)
        if best_d is not None and best_i is not None:
            d, idx = torch.cat([best_d, d], 1), torch.cat([best_i, idx], 1)
        best_d, best_i = _smallest(d, idx, min(k, d.shape[1]))
    assert best_d is not None and best_i is not None  # the reference is not empty
    order = torch.sort(best_d, dim=1, stable=True).indices  # nearest first; equal distances by index
    return best_i.gather(1, order), best_d.gather(1, order)


def _smallest(d: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest of each row of (B, M) ``d`` (``idx`` increasing along each row), ties to the lowest
    index, kept in row order. ``topk`` alone may return any of several equal values."""
    kth = d.topk(k, dim=1, largest=False).values[:, -1:]
    below, equal = d < kth, d == kth
    take = below | (equal & (equal.cumsum(1) <= k - below.sum(1, keepdim=True)))
    positions = torch.arange(d.shape[1], 0, -1, device=d.device)  # earlier columns rank higher
    pos = (take * positions).topk(k, dim=1).indices.sort(1).values
    return d.gather(1, pos), idx.gather(1, pos)


def coverage_radius(states: torch.Tensor, episodes: torch.Tensor, chunk: int = 2048) -> float:
    """90th percentile over reference frames of the distance (standardised joint states) to the nearest
    frame of another episode: how far apart the reference's episodes are where they cover the space."""
    nearest = []
    for i in range(0, len(states), chunk):
        d = torch.cdist(states[i : i + chunk], states)
        d[episodes[i : i + chunk, None] == episodes[None]] = float("inf")
        nearest.append(d.amin(1))
    near = torch.cat(nearest)
    near = near[torch.isfinite(near)]
    return max(float(torch.quantile(near, COVERAGE_QUANTILE)), 1e-6) if near.numel() else 1e-6


def select_coverage(states: np.ndarray, max_frames: int) -> np.ndarray:
    """Indices of at most ``max_frames`` of the (N, S) joint states that keep the state space covered:
    greedy farthest-point sampling on standardised states (its covering radius is within twice the best
    possible), instead of a blind stride that drops whole regions visited briefly. Sorted indices."""
    n = len(states)
    if max_frames >= n:
        return np.arange(n)
    if max_frames < 1:
        raise ValueError(f"max_frames={max_frames} must be >= 1")
    x = torch.as_tensor(np.asarray(states, np.float32)).reshape(n, -1)
    x = (x - x.mean(0)) / (x.std(0, unbiased=False) + 1e-6)
    chosen = [int(torch.cdist(x.mean(0, keepdim=True), x)[0].argmin())]
    gap = torch.cdist(x[chosen[0]][None], x)[0]
    for _ in range(max_frames - 1):
        i = int(gap.argmax())
        chosen.append(i)
        gap = torch.minimum(gap, torch.cdist(x[i][None], x)[0])
    return np.sort(np.asarray(chosen))


def _states(states: Array | None, n: int) -> torch.Tensor:
    """(N, S) float states; a policy without a state input conditions on nothing (one constant value)."""
    if states is None:
        return torch.zeros(n, 1)
    states = torch.as_tensor(np.asarray(states, dtype=np.float32))
    return states.reshape(n, -1) if states.numel() else torch.zeros(n, 1)
