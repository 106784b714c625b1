"""Train a medseg model from a YAML recipe, on a laptop CPU or several GPUs.

    accelerate launch train/train.py --config train/configs/unet_lite0_polyp.yaml [--train.epochs 2 ...]
    python train/train.py --config ...        (one process; the same as the ``medseg-train`` command)

The loop has the Accelerate examples' shape, and its parts live in the library so that ``medseg-train``, this
script and the tests run the same code: ``get_dataloaders`` (the data seam), ``train_one_epoch``, ``evaluate``
and ``main`` in :mod:`medseg_core.training`; recipes and their strict keys in :mod:`medseg_core.config`. This
script is the command (:func:`medseg_core.commands.train`): ``--help`` answers before torch is imported, and the
exit status is 0 done, 1 failed, 2 usage error.
"""

import sys

from medseg_core.commands import train

if __name__ == "__main__":
    sys.exit(train())
