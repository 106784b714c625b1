"""What people look at: confidence heat maps, mask files, the summary text and the TDC-Enhance gallery.

The app and the batch engine call these, so a mask or a summary looks the same from every door.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from .enhance import tdc_views
from .labels import LabelSchema

__all__ = ["VIEW_LABELS", "confidence_heatmap", "draw_legend", "enhance_gallery", "legend_markdown",
           "presence_markdown", "summary_markdown", "tradeoff_chart"]

VIEW_LABELS = {"original": "Original", "texture": "Texture", "detail": "Detail (highlights removed)",
               "color": "Colour (tone)"}


def confidence_heatmap(image: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Lesion probability (H, W) in the turbo colour map, laid over a dimmed copy of the RGB image (H, W, 3)."""
    heat = cv2.applyColorMap((np.clip(confidence, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(heat, 0.65, image, 0.35, 0)


def draw_legend(overlay: np.ndarray, schema: LabelSchema) -> np.ndarray:
    """The overlay with its colour key drawn into the top-left corner: on a darkened box, one swatch per lesion class
    in the class's overlay colour (filled where classes are tinted regions, an outline for multi-label classes,
    which the overlay outlines) and the class name. Sized to the image; returns a copy. For what a page shows: files
    written for download (masks, batch overlays) carry no legend."""
    out = np.array(overlay, copy=True)
    names, colours = list(schema.foreground), list(schema.foreground_colours)
    h, w = out.shape[:2]
    if not names:
        return out
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = float(np.clip(max(h, w) / 900, 0.35, 1.2))
    while True:  # shrink the text until the box fits in 60 % of each side; none where it cannot be read
        thick = max(1, round(scale * 1.6))
        sizes = [cv2.getTextSize(n, font, scale, thick) for n in names]
        text_h = max(s[0][1] + s[1] for s in sizes)
        pad = max(2, round(text_h / 3))
        box_w = 3 * pad + text_h + max(s[0][0] for s in sizes)
        box_h = pad + len(names) * (text_h + pad)
        if pad + box_w <= w * 0.6 and pad + box_h <= h * 0.6:
            break
        if scale < 0.3:
            return out
        scale *= 0.8
    x0 = y0 = pad
    x1, y1 = x0 + box_w, y0 + box_h
    out[y0:y1, x0:x1] = (out[y0:y1, x0:x1].astype(np.float32) * 0.3).astype(np.uint8)
    for i, (name, colour) in enumerate(zip(names, colours)):
        top = y0 + pad + i * (text_h + pad)
        corner = (x0 + pad, top), (x0 + pad + text_h - 1, top + text_h - 1)
        colour = tuple(int(v) for v in colour)
        cv2.rectangle(out, *corner, colour, max(2, thick) if schema.multilabel else cv2.FILLED)
        baseline = sizes[i][1]
        cv2.putText(out, name, (x0 + 2 * pad + text_h, top + text_h - baseline), font, scale, (255, 255, 255), thick,
                    cv2.LINE_AA)
    return out


def legend_markdown(classes: dict[str, dict[str, Any]], schema: LabelSchema) -> list[str]:
    """One line per class: a swatch in the class's overlay colour, its name, its area."""
    colours = dict(zip(schema.foreground, schema.foreground_colours))
    return [f'<span style="color: rgb{tuple(colours[name])}">■</span> **{name}:** {c["percent"]:.2f} % '
            f'({c["pixels"]:,} px)  ' for name, c in classes.items()]


def presence_markdown(stats: dict[str, Any]) -> str:
    """The image-level decision as a heading: "Lesion found" or "No lesion found", with the frame's presence score
    and the recorded threshold it was held against (see :mod:`medseg_core.presence`)."""
    found = stats.get("lesion_present", stats["lesion_pixels"] > 0)
    score, threshold, rule = stats.get("presence_score"), stats.get("presence_threshold"), stats.get("presence_rule")
    head = "### Lesion found" if found else "### No lesion found"
    if threshold is None:
        why = "no lesion-present rule is recorded for this model: every region above the pixel threshold counts"
        return f"{head}\n{why}  " if found else f"{head}\nnothing above the pixel threshold  "
    regions = stats.get("regions_found", 0)
    detail = (f"presence score {score:.3f} against the threshold {threshold:g} ({rule})"
              + (f"; {regions - stats.get('regions_kept', 0)} weaker region(s) not drawn"
                 if regions > stats.get("regions_kept", 0) else ""))
    return f"{head}\n{detail}  "


def summary_markdown(stats: dict[str, Any], scores: dict[str, float] | None = None,
                     schema: LabelSchema | None = None) -> str:
    """The Segment tab's summary of a result's ``stats`` (and of ground-truth ``scores`` when given), with a legend
    in the schema's colours for multi-class and multi-label models."""
    conf = stats["mean_confidence"]
    lines = [
        presence_markdown(stats),
        f"**Lesion area:** {stats['lesion_percent']:.2f} % of the image ({stats['lesion_pixels']:,} px)  ",
        f"**Lesions:** {stats['lesion_count']}  ",
        f"**Mean confidence inside lesions:** {conf:.3f}  " if conf is not None else "",
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


def tradeoff_chart(sweep: Sequence[dict[str, Any]], marked: dict[str, Any] | None = None, title: str = "",
                   score: str = "mean", width: int = 760, height: int = 520) -> np.ndarray:
    """The presence trade-off as an RGB ``uint8`` chart: per-lesion sensitivity (y) against false alarms (x: the
    share of lesion-free frames drawn on when the sweep has such frames, else false-positive regions per frame), one
    point per threshold of :func:`medseg_core.presence.presence_sweep`, a few labelled with their threshold, and the
    ``marked`` operating point (the recorded rule) circled."""
    if sweep and not any(np.isfinite(r.get("lesion_sensitivity", float("nan"))) for r in sweep):
        return _false_alarm_chart(sweep, marked, title, score, width, height)
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 24, 56, 60
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    grey, dark, red, blue, font = (210, 210, 210), (50, 50, 50), (220, 40, 40), (40, 90, 220), cv2.FONT_HERSHEY_SIMPLEX
    free = bool(sweep) and "frame_specificity" in sweep[0]
    xlabel = "share of lesion-free frames with a lesion drawn" if free else "false-positive regions per frame"

    def x_of(row: dict[str, Any]) -> float:
        return 1.0 - row["frame_specificity"] if free else row["fp_regions_per_frame"]

    points = [(x_of(r), r.get("lesion_sensitivity", float("nan")), r["threshold"]) for r in sweep]
    x_max = 1.0 if free else max(0.5, max((p[0] for p in points), default=0.5))
    y_min = 0.5  # below half the lesions found, an operating point is of no use: such points sit on the floor

    def to_px(x: float, y: float) -> tuple[int, int]:
        y = max(y, y_min)
        return round(x0 + (x1 - x0) * x / x_max), round(y1 - (y1 - y0) * (y - y_min) / (1 - y_min))

    for k in range(6):
        y = y_min + (1 - y_min) * k / 5
        py = to_px(0, y)[1]
        cv2.line(img, (x0, py), (x1, py), grey, 1)
        cv2.putText(img, f"{y:.2f}", (14, py + 4), font, 0.42, dark, 1, cv2.LINE_AA)
        x = x_max * k / 5
        px = to_px(x, y_min)[0]
        cv2.line(img, (px, y0), (px, y1), grey, 1)
        cv2.putText(img, f"{x:.2f}" if not free else f"{100 * x:.0f}%", (px - 14, y1 + 18), font, 0.42, dark, 1,
                    cv2.LINE_AA)
    cv2.rectangle(img, (x0, y0), (x1, y1), dark, 1)
    finite = [(to_px(x, y), t) for x, y, t in points if np.isfinite(y)]
    if finite:
        cv2.polylines(img, [np.array([p for p, _ in finite], np.int32)], False, blue, 2, cv2.LINE_AA)
        labelled = set()
        for p, t in finite:
            if round(t, 3) in (0.0, 0.5, 0.8, 0.9, 0.95, 0.99) and p not in labelled:
                labelled.add(p)
                cv2.circle(img, p, 3, blue, -1, cv2.LINE_AA)
                cv2.putText(img, f"{t:g}", (p[0] + 5, p[1] + 14), font, 0.38, blue, 1, cv2.LINE_AA)
    if marked is not None and np.isfinite(marked.get("lesion_sensitivity", float("nan"))):
        p = to_px(x_of(marked), marked["lesion_sensitivity"])
        cv2.circle(img, p, 8, red, 2, cv2.LINE_AA)
        below = p[1] - 8 < y0 + 16  # near the top edge: the label goes under the point
        cv2.putText(img, f"recorded: {score} >= {marked['threshold']:g}", (p[0] + 12, p[1] + (24 if below else -8)),
                    font, 0.45, red, 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, (x0, height - 18), font, 0.48, dark, 1, cv2.LINE_AA)
    cv2.putText(img, f"per-lesion sensitivity (threshold on the {score} confidence of a region)", (x0, y0 - 12),
                font, 0.45, dark, 1, cv2.LINE_AA)
    cv2.putText(img, title[:90], (x0, 22), font, 0.5, dark, 1, cv2.LINE_AA)
    return img


def _false_alarm_chart(sweep: Sequence[dict[str, Any]], marked: dict[str, Any] | None, title: str, score: str,
                       width: int, height: int) -> np.ndarray:
    """A split without any lesion (only lesion-free frames): the share of frames drawn on against the threshold."""
    img = np.full((height, width, 3), 255, np.uint8)
    x0, x1, y0, y1 = 70, width - 24, 56, height - 60
    grey, dark, red, blue, font = (210, 210, 210), (50, 50, 50), (220, 40, 40), (40, 90, 220), cv2.FONT_HERSHEY_SIMPLEX

    def to_px(t: float, share: float) -> tuple[int, int]:
        return round(x0 + (x1 - x0) * t), round(y1 - (y1 - y0) * share)

    for k in range(6):
        py = to_px(0, k / 5)[1]
        cv2.line(img, (x0, py), (x1, py), grey, 1)
        cv2.putText(img, f"{20 * k}%", (18, py + 4), font, 0.42, dark, 1, cv2.LINE_AA)
        px = to_px(k / 5, 0)[0]
        cv2.line(img, (px, y0), (px, y1), grey, 1)
        cv2.putText(img, f"{k / 5:.1f}", (px - 10, y1 + 18), font, 0.42, dark, 1, cv2.LINE_AA)
    cv2.rectangle(img, (x0, y0), (x1, y1), dark, 1)
    points = [to_px(r["threshold"], 1 - r["frame_specificity"]) for r in sweep if "frame_specificity" in r]
    if points:
        cv2.polylines(img, [np.array(points, np.int32)], False, blue, 2, cv2.LINE_AA)
    if marked is not None and "frame_specificity" in marked:
        p = to_px(marked["threshold"], 1 - marked["frame_specificity"])
        cv2.circle(img, p, 8, red, 2, cv2.LINE_AA)
        cv2.putText(img, f"recorded: {score} >= {marked['threshold']:g}, {100 * (1 - marked['frame_specificity']):.1f}%"
                    " of frames drawn on", (max(x0, p[0] - 300), p[1] - 14), font, 0.45, red, 1, cv2.LINE_AA)
    cv2.putText(img, f"threshold on the {score} confidence of a region", (x0, height - 18), font, 0.48, dark, 1,
                cv2.LINE_AA)
    cv2.putText(img, "share of lesion-free frames with a lesion drawn (no frame here holds a lesion)", (x0, y0 - 12),
                font, 0.45, dark, 1, cv2.LINE_AA)
    cv2.putText(img, title[:90], (x0, 22), font, 0.5, dark, 1, cv2.LINE_AA)
    return img
