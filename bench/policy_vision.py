"""Does a sim policy see the cube? Three checks on first frames of held-out cube positions (seconds each).

- ``first action``: correlation of the policy's first ``dy`` with the scripted expert's, and their spreads;
- ``probe``: held-out R^2 of a ridge regression from the backbone's feature map to the cube's table x, y
  (does the ResNet encode the cube at all?);
- ``attention``: share of the decoder's cross-attention on the latent, state and image tokens.

    python bench/policy_vision.py outputs/demo/policy/pretrained_model [more policies ...]

docs/demo.md ("Where the camera's information is lost") has what these measured.
"""

from __future__ import annotations

import argparse
import functools
import os

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")


@functools.cache
def first_frames(height: int, width: int, first_seed: int, positions: int) -> tuple:
    """Images (N, 3, H, W) in [0, 1], states (N, 6), cube table positions (N, 2) and the expert's first dy (N,)."""
    import torch

    from pai_core.sim.env import CAMERA, PickCubeSim, SimConfig
    from pai_core.sim.expert import PickExpert

    images, states, cubes, expert = [], [], [], []
    with PickCubeSim(SimConfig(height=height, width=width)) as sim:
        for i in range(positions):
            obs = sim.reset(first_seed + i)
            images.append(obs.images[CAMERA])
            states.append(obs.state)
            cubes.append(sim.block_pos[:2].copy())
            expert.append(PickExpert().act(sim.grasp_point, sim.block_pos)[1])
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(np.stack(states)), np.stack(cubes), np.asarray(expert)


def main() -> None:
    import torch
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors

    from pai_core.sim.env import CAMERA, import_sim_package

    import_sim_package()  # before any policy loads: it orders triton's LLVM before Mesa's
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("policies", nargs="+", help="LeRobot pretrained_model folders")
    ap.add_argument("--positions", type=int, default=120, help="cube positions (seeds --first-seed..)")
    ap.add_argument(
        "--first-seed", type=int, default=30_000, help="30000: positions no recording used; 0: the training set's"
    )
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fit = slice(0, 3 * args.positions // 4)
    test = slice(fit.stop, args.positions)
    for path in args.policies:
        policy = ACTPolicy.from_pretrained(path).eval()
        pre, post = make_pre_post_processors(
            policy.config, pretrained_path=path, preprocessor_overrides={"device_processor": {"device": "cpu"}}
        )
        _, height, width = policy.config.input_features[CAMERA].shape
        x, state, cube, expert_dy = first_frames(height, width, args.first_seed, args.positions)
        got: dict[str, torch.Tensor] = {}
        hook = policy.model.decoder.layers[0].multihead_attn.register_forward_hook(
            lambda m, i, o, got=got: got.__setitem__("weights", o[1])
        )
        batch = pre({CAMERA: x, "observation.state": state})
        with torch.no_grad():
            dy = post(policy.predict_action_chunk(batch))[:, 0, 1].numpy()
            features = policy.model.backbone(batch[CAMERA])["feature_map"].flatten(1).numpy()
        hook.remove()
        z = (features - features[fit].mean(0)) / (features[fit].std(0) + 1e-6)
        r2 = []
        for lam in (1.0, 10.0, 100.0, 1000.0):
            # ridge in its dual form (an N x N solve): the feature map has up to 512 x 6 x 8 values
            gram = z[fit] @ z[fit].T + lam * np.eye(fit.stop)
            pred = z[test] @ z[fit].T @ np.linalg.solve(gram, cube[fit] - cube[fit].mean(0)) + cube[fit].mean(0)
            r2.append(1 - ((pred - cube[test]) ** 2).sum(0) / ((cube[test] - cube[test].mean(0)) ** 2).sum(0))
        best = max(r2, key=lambda r: float(r.mean()))
        share = got["weights"].mean((0, 1))
        n_state = 1 if policy.config.robot_state_feature else 0
        image = share[1 + n_state :]
        print(path)
        print(
            f"  first action dy: correlation with the expert {np.corrcoef(dy, expert_dy)[0, 1]:+.2f}, "
            f"std {dy.std():.3f} (expert {expert_dy.std():.3f}), {args.positions} positions"
        )
        print(
            f"  probe: held-out R^2 x {best[0]:.2f} y {best[1]:.2f} ({fit.stop} to fit, {test.stop - fit.stop} to test)"
        )
        print(
            f"  attention: latent {share[0]:.3f} state {share[1 : 1 + n_state].sum():.3f} image {image.sum():.3f} "
            f"(largest image token {image.max():.3f} of {image.numel()})"
        )


if __name__ == "__main__":
    main()
