"""Write a weights folder's model card from what was measured: its config, the training summary and evaluate.py JSONs.

    python train/model_card.py --weights weights/unet_lite0.polyp --name unet_lite0.polyp \
        --summary runs/unet_lite0.polyp/train_summary.json --eval runs/unet_lite0.polyp/eval/*.json \
        --notes-file docs/results/unet_lite0.polyp_card_notes.md

Numbers are copied from the JSON files that ``train/evaluate.py --json`` wrote; nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg_core.hub import write_model_card  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description="Write README.md (model card) for a weights folder from measured results.")
    p.add_argument("--weights", required=True, help="folder with config.json and model.safetensors")
    p.add_argument("--name", required=True, help="the weights' name, e.g. unet_lite0.polyp")
    p.add_argument("--summary", help="train_summary.json of the training run")
    p.add_argument("--eval", nargs="*", default=[], help="JSON files written by train/evaluate.py --json")
    p.add_argument("--notes-file", help="markdown appended to the card (history of the run, caveats)")
    args = p.parse_args(argv)
    folder = Path(args.weights)
    config = json.loads((folder / "config.json").read_text())
    recipe = "See the training summary."
    data = "Unknown."
    if args.summary:
        s = json.loads(Path(args.summary).read_text())
        c, t = s["config"], s["config"]["train"]
        data = (f"Trained on split `{c['data']['train_split']}`, model selected on `{c['data']['val_split']}` "
                f"(split files in `{c['data']['root']}/splits`); mask encoding `{c['data']['mask_encoding']}`.")
        recipe = (
            f"{t['epochs']} epochs, batch {t['batch_size']}, AdamW lr {t['lr']} (weight decay {t['weight_decay']}, "
            f"{t['warmup_epochs']} warm-up epochs, cosine decay), loss `{t['loss']}`, augmentation strength "
            f"{t['augment']}, input {config['input_size']} px, precision `{t['precision']}`, channels-last "
            f"{t['channels_last']}. Device: {s['device']}. Best validation Dice {s['best_val_dice']:.4f} at epoch "
            f"{s['best_epoch']} (at input resolution)."
        )
    metrics = {}
    for path in args.eval:
        result = json.loads(Path(path).read_text())
        metrics[f"{result['split']} (n={result['n']})"] = {k: v for k, v in result.items() if isinstance(v, float)}
    notes = Path(args.notes_file).read_text() if args.notes_file else ""
    return write_model_card(folder, name=args.name, config=config, data=data, recipe=recipe, metrics=metrics,
                            notes=notes)


if __name__ == "__main__":
    main()
