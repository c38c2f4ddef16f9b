"""Run one training step of TinyNet; launched by test_train.py alone or under torchrun."""

import sys

from binface.train.config import load_config
from binface.train.loop import Trainer
from helpers import RandomFaces, TinyNet

out, batch_per_process = sys.argv[1], int(sys.argv[2])
cfg = load_config(None, [f"output={out}", f"train.batch_size={batch_per_process}",
                         "train.max_steps=1", "train.epochs=5", "optim.name=sgd",
                         "optim.lr=0.5", "optim.weight_decay=0.0", "train.grad_clip=0",
                         "head.s=16"])
Trainer(cfg, model=TinyNet(), train_set=RandomFaces(), progress=False).fit()
