"""kt_swarm's loss inside your own PyTorch loop: two timm models teach each other on Fashion-MNIST.

    python examples/own_training_loop.py --steps 50

No config, no engine: the method is two functions (roles.assign_teachers inside
objectives.swarm_loss). Models start from random weights here, so both improve mostly
from the labels; the point is the shape of the loop.
"""
import argparse

import timm
import torch

from kt_swarm import swarm_loss
from kt_swarm.config import AugmentConfig, DataConfig
from kt_swarm.data import Preprocess, augment_images, batch_plan, load_dataset
from kt_swarm.roles import assign_teachers, true_class_scores

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=100)
args = ap.parse_args()

data = load_dataset(DataConfig(val_fraction=0.1))
models = [
    timm.create_model("resnet10t", num_classes=10, in_chans=1, channels=(16, 32, 64, 128), stem_width=16),
    timm.create_model("vit_tiny_patch16_224", num_classes=10, in_chans=1, img_size=28, patch_size=7, embed_dim=64, depth=3, num_heads=2),
]
prep = Preprocess(in_chans=1, input_size=28, mean=(0.286,), std=(0.353,))
opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]

for step in range(args.steps):
    plan = batch_plan(data.splits["train"], seed=0, epoch=0, step=step, batch_size=128, augment=AugmentConfig(shift=2))
    x, y = prep(augment_images(data.images[plan.ids], plan)), data.labels[plan.ids]
    logits = [m(x) for m in models]
    loss = swarm_loss(logits, y, temperature=1.0, weight=1.0, detach_teacher=True)
    for o in opts:
        o.zero_grad()
    loss.backward()
    for o in opts:
        o.step()
    if step % 25 == 0 or step == args.steps - 1:
        teachers = assign_teachers(true_class_scores(torch.stack(logits).detach(), y))
        share = [(teachers == m).float().mean().item() for m in range(len(models))]
        print(f"step {step:4d}  loss {loss.item():.3f}  taught: resnet {share[0]:.0%}, vit {share[1]:.0%}")

with torch.no_grad():
    ids = data.splits["test"][:2000]
    for name, m in zip(["resnet", "vit"], models):
        m.eval()
        acc = (m(prep(data.images[ids])).argmax(-1) == data.labels[ids]).float().mean().item()
        print(f"{name}: test accuracy on 2000 images {acc:.3f}")
