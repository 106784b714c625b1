"""Train a medseg model from a YAML recipe, on a laptop CPU or several GPUs.

    accelerate launch train/train.py --config train/configs/unet_lite0_polyp.yaml [--train.epochs 2 ...]
    python train/train.py --config ...        (one process; the same as the ``medseg-train`` command)

The loop has the Accelerate examples' shape, and its parts live in the library so that ``medseg-train``, this
script and the tests run the same code: ``get_dataloaders`` (the data seam), ``train_one_epoch``, ``evaluate``
and ``main`` in :mod:`medseg_core.training`; recipes and their strict keys in :mod:`medseg_core.config`.
"""

from medseg_core.training import evaluate, get_dataloaders, main, train_one_epoch

__all__ = ["evaluate", "get_dataloaders", "main", "train_one_epoch"]

if __name__ == "__main__":
    main()
