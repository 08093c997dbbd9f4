"""One training step of the fine U-Net (forward, loss, backward, AdamW): the default NCDHW memory format in
fp32, channels_last_3d (NDHWC) in fp32, and NDHWC under the trainer's autocast (bf16 on a CPU with native
bf16, fp16 on CUDA; ``predictor.training.loop.autocast_dtype``), and the last with the textbook one-hot form of
the loss instead of the trainer's, side by side in one process, interleaved, median of --runs.

The step is the trainer's own: the shipped fine network (TrainConfig().fine: 4 levels, 4 input channels), a batch of
2 patches of 48x56x80 voxels (canonical S-I, A-P, R-L), CE + soft Dice.

    python benchmarks/train_step_bench.py                 # 2 threads, 7 runs of 3 steps each
    python benchmarks/train_step_bench.py --threads 1 --runs 5 --device cuda
    python benchmarks/train_step_bench.py --upsample 1 2 2  # labels on a 2 x 1 x 1 mm grid
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F

from predictor.network import UNet3D, space_to_depth, upsampled_shape
from predictor.pipeline import autocast
from predictor.training.config import TrainConfig
from predictor.training.loop import autocast_dtype
from predictor.training.loss import dice_ce_loss


def one_hot_dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The textbook form of the trainer's loss (softmax twice, a one-hot target of C times the voxels); the
    same value as ``dice_ce_loss`` (tests/test_predictor_train.py), kept here to time the difference."""
    ce = F.cross_entropy(logits, target)
    prob = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(prob.dtype)
    dims = (0, *range(2, prob.ndim))
    inter, denom = (prob * onehot).sum(dims), prob.sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims)[1:] > 0
    dice = (2 * inter[1:] + 1e-5) / (denom[1:] + 1e-5)
    return ce + 1 - dice[present].mean()


# name -> (memory format, autocast on, loss)
VARIANTS = {"ncdhw fp32": (torch.contiguous_format, False, dice_ce_loss),
            "ndhwc fp32": (torch.channels_last_3d, False, dice_ce_loss),
            "ndhwc autocast": (torch.channels_last_3d, True, dice_ce_loss),
            "... one-hot loss": (torch.channels_last_3d, True, one_hot_dice_ce_loss)}


def make(fmt: torch.memory_format, device: torch.device, upsample: tuple[int, int, int]
         ) -> tuple[UNet3D, torch.optim.Optimizer]:
    torch.manual_seed(0)
    unet = replace(TrainConfig().fine.unet, upsample=upsample)
    net = UNet3D(unet).to(device).to(memory_format=fmt).train()
    return net, torch.optim.AdamW(net.parameters(), lr=1e-3)


def step_seconds(net: UNet3D, opt: torch.optim.Optimizer, fmt: torch.memory_format, dtype: torch.dtype | None,
                 loss_fn: Callable, device: torch.device, steps: int) -> float:
    spec = TrainConfig().fine
    x = torch.randn(spec.batch, net.config.in_channels, *spec.patch, device=device).contiguous(memory_format=fmt)
    up = net.config.upsample
    y = torch.randint(0, net.config.classes, (spec.batch, *upsampled_shape(spec.patch, up)), device=device)
    y = space_to_depth(y, up)  # the trainer's sub-voxel target layout
    clock = time.perf_counter()
    for _ in range(steps):
        with autocast(device, dtype):
            logits = net.forward_blocks(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - clock) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--steps", type=int, default=3, help="steps per run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--upsample", type=int, nargs=3, default=TrainConfig().fine.unet.upsample,
                   metavar=("FZ", "FY", "FX"),
                   help="the fine network's sub-voxel head (predictor.train --fine-upsample)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = autocast_dtype(device, "auto")
    variants = {name: (fmt, amp if cast else None, loss) for name, (fmt, cast, loss) in VARIANTS.items()}
    models = {name: make(fmt, device, tuple(args.upsample)) for name, (fmt, _, _) in variants.items()}
    for name, (net, opt) in models.items():
        step_seconds(net, opt, *variants[name], device, 1)  # warm-up: oneDNN/cuDNN kernel selection
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, (net, opt) in models.items():
            times[name].append(step_seconds(net, opt, *variants[name], device, args.steps))
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"\nfine U-Net training step, {device}, {args.threads} threads, autocast dtype {amp}, "
          f"upsample {'x'.join(map(str, args.upsample))}, "
          f"median of {args.runs} runs x {args.steps} steps")
    print(f"{'variant':>18} {'s/step':>8} {'vs ncdhw fp32':>14}")
    first = med["ncdhw fp32"]
    for name, value in med.items():
        print(f"{name:>18} {value:8.3f} {first / value:13.2f}x")


if __name__ == "__main__":
    main()
