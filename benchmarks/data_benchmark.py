"""Data loading vs compute: time of one augmented batch vs one ResNet-20 training step (CPU or GPU).

    python benchmarks/data_benchmark.py [--data-dir ../shared/data/cifar10-jpeg.tar.gz] [--batch-size 128]

Prints the median batch-preparation time, the median training-step time and the share of loading.
Without --data-dir it uses synthetic CIFAR-shaped data (the loader's cost does not depend on content).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from prune_tracker.core.data import TRAINING, BatchLoader, load_splits
from prune_tracker.core.models import build_model
from prune_tracker.core.training import TrainConfig, Trainer, resolve_device


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = resolve_device(args.device)
    splits = load_splits("cifar10" if args.data_dir else "synthetic", args.data_dir, val_size=0)
    loader = BatchLoader(splits.train, args.batch_size, splits.mean, splits.std, order=TRAINING, device=device)
    batches = iter(loader)
    load_s = median_seconds(lambda: next(batches), args.repeats)
    trainer = Trainer(build_model("resnet20"), splits, TrainConfig(epochs=1, batch_size=args.batch_size),
                      device, progress=False)
    x, y = next(iter(trainer.loader))

    def step() -> None:
        trainer._train_step(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    step_s = median_seconds(step, args.repeats)
    print(f"device={device} amp={trainer.amp_dtype} threads={torch.get_num_threads()} batch={args.batch_size}")
    print(f"batch preparation (crop+flip+normalise): {load_s * 1e3:.2f} ms")
    print(f"ResNet-20 training step:                 {step_s * 1e3:.1f} ms ({args.batch_size / step_s:.0f} images/s)")
    print(f"loading share of a step: {100 * load_s / (load_s + step_s):.1f}%")


if __name__ == "__main__":
    main()
