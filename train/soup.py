"""Average the weights of runs of one network: a uniform or greedy model soup (the same as ``medseg-soup``).

    python train/soup.py --models weights/unet_lite2.polyp runs/a/model runs/b/model --split polyp-val --greedy \
        --output runs/soup --json docs/results/soup.json

The code is :mod:`medseg_core.soup`.
"""

from medseg_core.soup import main

if __name__ == "__main__":
    main()
