"""Average the weights of runs of one network: a uniform or greedy model soup (the same as ``medseg-soup``).

    python train/soup.py --models weights/unet_lite2.polyp runs/a/model runs/b/model --split polyp-val --greedy \
        --output runs/soup --json docs/results/soup.json

The code is :mod:`medseg_core.soup`; the exit status is the command's (0 done, 1 failed, 2 usage error).
"""

import sys

from medseg_core.commands import soup

if __name__ == "__main__":
    sys.exit(soup())
