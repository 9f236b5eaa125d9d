"""PyTorch's eager training loop for the FedAvg paper's CNN, the reference for
`cargo bench -p flotilla-common --bench cnn_throughput` (the same model, batch 10, SGD,
one local epoch over IMAGES MNIST-sized images, one thread). Prints one JSON line.

Usage: python3 scripts/cnn_throughput.py [IMAGES]   (run by scripts/fedavg_paper.sh throughput)
"""
import json
import sys
import time

import torch
from torch import nn

images = int(sys.argv[1]) if len(sys.argv) > 1 else 600
torch.set_num_threads(1)
torch.manual_seed(1)
model = nn.Sequential(
    nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
    nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
    nn.Flatten(), nn.Linear(7 * 7 * 64, 512), nn.ReLU(), nn.Linear(512, 10),
)
assert sum(p.numel() for p in model.parameters()) == 1_663_370
opt = torch.optim.SGD(model.parameters(), lr=0.05)
loss_fn = nn.CrossEntropyLoss()
x = (torch.arange(images * 784) * 7919 % 256).float().div(255).sub(0.5).reshape(images, 1, 28, 28)
y = torch.arange(images) % 10


def epoch(n):
    for i in range(0, n, 10):
        opt.zero_grad()
        loss_fn(model(x[i:i + 10]), y[i:i + 10]).backward()
        opt.step()


epoch(20)  # warm-up, as the Rust side does
start = time.perf_counter()
epoch(images)
seconds = time.perf_counter() - start
print(json.dumps({"backend": f"pytorch {torch.__version__} eager", "images": images, "seconds": round(seconds, 3), "images_per_s": round(images / seconds, 1)}))
