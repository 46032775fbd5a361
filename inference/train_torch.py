"""Train (or fine-tune) a CIFAR ResNet (``--model cifar10_resnet20`` ...) with PyTorch and
write a checkpoint the torch engine serves (``MODEL_ENGINE=torch MODEL_WEIGHTS=<file>``).

``python -m inference.train --model ...`` runs it (``make train MODEL=cifar10_resnet20``).
The recipe is upstream's (chenyaofo/image-classification-codebase, conf/cifar10.conf):
SGD with Nesterov momentum 0.9, weight decay 5e-4, learning rate 0.1 with a cosine
schedule to 0, cross-entropy; images randomly cropped from a 4-pixel zero padding and
flipped left-right, then the serving preprocessing (``cifar_resnet.preprocess``), so the
weights mean the same thing when served.  ``--init pretrained`` starts from the published
checkpoint (the torch engine's download, cache and checks); the default ``random`` trains
from scratch.  The file is a ``torch.save`` of the ``state_dict``, the published format.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time

import numpy as np

from inference.cifar import load_cifar
from inference.weights import file_sha256

log = logging.getLogger("inference.train")

DEFAULT_LR = 0.1
MOMENTUM, WEIGHT_DECAY, PADDING = 0.9, 5e-4, 4


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Upstream's training transform on uint8 N x 32 x 32 x 3: a random 32x32 crop of the
    image padded with 4 black pixels on each side, then a left-right flip half the time."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (PADDING, PADDING), (PADDING, PADDING), (0, 0)))
    dy, dx = rng.integers(0, 2 * PADDING + 1, (2, n))
    out = np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, ::-1]
    return out


def _accuracy(net, x: np.ndarray, y: np.ndarray, mean, std, batch_size: int) -> tuple[float, float]:
    import torch

    from inference.cifar_resnet import preprocess

    net.eval()
    loss, correct = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            logits = net(preprocess(x[start:start + batch_size], mean, std))
            target = torch.from_numpy(y[start:start + batch_size])
            loss += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(dim=1) == target).sum())
    return loss / len(x), correct / len(x)


def train(args: argparse.Namespace) -> dict:
    import torch
    from tqdm import tqdm

    from common.settings import ServiceSettings
    from inference import cifar_resnet, torch_engine

    spec = cifar_resnet.spec(args.model)
    service = ServiceSettings()
    torch_engine.configure_threads(service.tf_intra_op_threads, service.tf_inter_op_threads)
    x_train, y_train = load_cifar(spec.dataset, args.dataset_source, "train")
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    log.info("training %s on %d %s images from %s", args.model, len(x_train), spec.dataset, args.dataset_source)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    net = cifar_resnet.build(args.model)
    if args.init == "pretrained":
        path = torch_engine.find_pretrained(spec, service.torch_weights_url,
                                            download_timeout_s=service.weights_download_timeout_s)
        torch_engine.load_checkpoint(net, path)
        log.info("initialised from the published checkpoint %s", path)
    mean, std = cifar_resnet.normalizer(spec.dataset)
    lr = DEFAULT_LR if args.lr is None else args.lr
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                                nesterov=True)
    steps = args.steps or math.ceil(len(x_train) / args.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * steps)

    # Wall and CPU seconds per epoch: on a shared machine the wall time says as much about
    # the neighbours as about the model; the CPU time (every thread of this process) does not.
    epoch_seconds, epoch_cpu_seconds, losses, accuracies = [], [], [], []
    for epoch in range(args.epochs):
        net.train()
        order = rng.permutation(len(x_train))
        started, cpu_started, seen, loss_sum, correct = time.perf_counter(), time.process_time(), 0, 0.0, 0
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{args.epochs}", unit="step", disable=args.verbose == 0)
        for step in bar:
            # Steps past the end of the shuffled set wrap around (--steps larger than one pass).
            picks = order[(np.arange(args.batch_size) + step * args.batch_size) % len(order)]
            target = torch.from_numpy(y_train[picks])
            logits = net(cifar_resnet.preprocess(augment(x_train[picks], rng), mean, std))
            loss = torch.nn.functional.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += len(picks)
            loss_sum += loss.item() * len(picks)
            correct += int((logits.argmax(dim=1) == target).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        epoch_seconds.append(time.perf_counter() - started)
        epoch_cpu_seconds.append(time.process_time() - cpu_started)
        losses.append(loss_sum / seen)
        accuracies.append(correct / seen)
        log.info("epoch %d/%d: %.1f s (%.1f CPU s), loss %.4f, accuracy %.4f", epoch + 1, args.epochs,
                 epoch_seconds[-1], epoch_cpu_seconds[-1], losses[-1], accuracies[-1])
    result = {"train_seconds": sum(epoch_seconds), "epoch_seconds": epoch_seconds,
              "epoch_cpu_seconds": epoch_cpu_seconds, "loss": losses[-1], "accuracy": accuracies[-1],
              "train_images": len(x_train), "steps_per_epoch": steps, "threads": torch.get_num_threads()}

    if args.val_limit:
        x_test, y_test = load_cifar(spec.dataset, args.dataset_source, "test")
        x_test, y_test = x_test[:args.val_limit], y_test[:args.val_limit]
        val_loss, val_acc = _accuracy(net, x_test, y_test, mean, std, max(args.batch_size, 256))
        result.update(val_loss=val_loss, val_accuracy=val_acc, val_images=len(x_test))

    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    torch.save(net.state_dict(), out + ".part")
    os.replace(out + ".part", out)  # a crash mid-write never leaves a torn checkpoint under the name
    sha8 = file_sha256(out)[:8]
    result.update(out=args.out, model_id=f"{args.model}-{sha8}-{cifar_resnet.IMAGE_SIZE}")
    return result
