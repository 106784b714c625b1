"""What people look at: confidence heat maps, mask files, the summary text and the TDC-Enhance gallery.

The app and the batch engine call these, so a mask or a summary looks the same from every door.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .enhance import tdc_views
from .labels import LabelSchema

__all__ = ["VIEW_LABELS", "confidence_heatmap", "enhance_gallery", "legend_markdown", "summary_markdown"]

VIEW_LABELS = {"original": "Original", "texture": "Texture", "detail": "Detail (highlights removed)",
               "color": "Colour (tone)"}


def confidence_heatmap(image: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Lesion probability (H, W) in the turbo colour map, laid over a dimmed copy of the RGB image (H, W, 3)."""
    heat = cv2.applyColorMap((np.clip(confidence, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(heat, 0.65, image, 0.35, 0)


def legend_markdown(classes: dict[str, dict[str, Any]], schema: LabelSchema) -> list[str]:
    """One line per class: a swatch in the class's overlay colour, its name, its area."""
    colours = dict(zip(schema.foreground, schema.foreground_colours))
    return [f'<span style="color: rgb{tuple(colours[name])}">■</span> **{name}:** {c["percent"]:.2f} % '
            f'({c["pixels"]:,} px)  ' for name, c in classes.items()]


def summary_markdown(stats: dict[str, Any], scores: dict[str, float] | None = None,
                     schema: LabelSchema | None = None) -> str:
    """The Segment tab's summary of a result's ``stats`` (and of ground-truth ``scores`` when given), with a legend
    in the schema's colours for multi-class and multi-label models."""
    conf = stats["mean_confidence"]
    lines = [
        f"**Lesion area:** {stats['lesion_percent']:.2f} % of the image ({stats['lesion_pixels']:,} px)  ",
        f"**Lesions:** {stats['lesion_count']}  ",
        f"**Mean confidence inside lesions:** {conf:.3f}  " if conf is not None else "**No lesion found.**  ",
        f"**Model:** `{stats['model']}` · {stats['inference_ms']:.0f} ms"
        + (" · flip TTA" if stats["tta"] else "")
        + (f" · post-processed ({', '.join(stats['postprocess'])})" if stats["postprocess"] else ""),
    ]
    if schema is not None and schema.task != "binary":  # a legend in the overlay's colours
        lines.append("")
        if schema.multilabel:
            lines.append("Classes may overlap: each is outlined in its colour.  ")
        lines += legend_markdown(stats["classes"], schema)
    if scores is not None:
        lines.append(f"\n**Against the ground truth:** Dice {scores['dice']:.3f} · IoU {scores['iou']:.3f} · "
                     f"HD95 {scores['hd95']:.1f} px" + (f" · mean class Dice {scores['mdice']:.3f}"
                                                        if "mdice" in scores else ""))
    return "\n".join(lines)


def enhance_gallery(image: np.ndarray) -> list[tuple[np.ndarray, str]]:
    """The image and its three TDC-Enhance views, each with its label."""
    views = tdc_views(image)
    return [(views[k], label) for k, label in VIEW_LABELS.items()]
