"""Train a model with the library's recipe code, without MLflow (for machines that lack it, such as a lent
GPU box), printing per-epoch figures; saves {"spec", "state_dict"} that `evaluate`/`prune` load as a file.

    python benchmarks/train_benchmark.py --data-dir cifar10-jpeg.tar.gz --arch resnet20 --epochs 30 \
        --device cuda --out resnet20.pt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_tracker.core.data import load_splits  # noqa: E402
from prune_tracker.core.models import architecture_spec, build_model  # noqa: E402
from prune_tracker.core.training import TrainConfig, Trainer, evaluate, fit, resolve_device, seed_everything  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--epochs", type=float, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", default="onecycle")
    p.add_argument("--warmup-fraction", type=float, default=0.25)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--ema-decay", type=float, default=0.0)
    p.add_argument("--resize-schedule", default="")
    p.add_argument("--no-bn-weight-decay", dest="bn_weight_decay", action="store_false")
    p.add_argument("--zero-init-residual", action="store_true")
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="model.pt")
    args = p.parse_args()
    device = resolve_device(args.device)
    splits = load_splits(args.dataset, args.data_dir, val_size=args.val_size, seed=args.seed)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         schedule=args.schedule, warmup_fraction=args.warmup_fraction,
                         label_smoothing=args.label_smoothing, ema_decay=args.ema_decay,
                         resize_schedule=args.resize_schedule, bn_weight_decay=args.bn_weight_decay,
                         zero_init_residual=args.zero_init_residual, seed=args.seed)
    seed_everything(args.seed)
    model = build_model(args.arch, splits.num_classes, zero_init=config.zero_init_residual)
    trainer = Trainer(model, splits, config, device, progress=False)
    started = time.perf_counter()
    fit(trainer, lambda epoch, m: print(f"epoch {epoch}: loss {m['train_loss']:.3f} "
                                      f"val {m.get('epoch_val_accuracy', 0):.4f} "
                                        f"{m['epoch_seconds']:.1f}s", flush=True))
    seconds = time.perf_counter() - started
    model = trainer.eval_model
    test_acc, _ = evaluate(model, splits.test, splits, device, tta_flip=True)
    plain_acc, _ = evaluate(model, splits.test, splits, device, tta_flip=False)
    print(f"device={device} amp={trainer.amp_dtype} epochs={args.epochs} train_seconds={seconds:.0f} "
          f"test_accuracy(flip TTA)={test_acc:.4f} test_accuracy(no TTA)={plain_acc:.4f}")
    model = model.cpu().to(memory_format=torch.contiguous_format)
    torch.save({"spec": architecture_spec(model, args.arch, splits.num_classes), "state_dict": model.state_dict()},
               args.out)


if __name__ == "__main__":
    main()
