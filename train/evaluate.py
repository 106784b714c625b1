"""Measure a model on a split or a folder of images and masks (the same as the ``medseg-evaluate`` command).

    python train/evaluate.py --model unet_lite0.polyp --data ../shared/data --split test-kvasir --json out.json
    accelerate launch --num_processes 4 train/evaluate.py ...   (each process takes a share of the images)

The code is :mod:`medseg_core.evaluation`; the exit status is the command's (0 done, 1 failed, 2 usage error).
"""

import sys

from medseg_core.commands import evaluate

if __name__ == "__main__":
    sys.exit(evaluate())
