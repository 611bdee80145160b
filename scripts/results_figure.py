"""The trade-off figure of docs/results.md: fidelity against editability per method, over
every recipe tried, drawn from the committed run records (benchmarks/records/).

    python scripts/results_figure.py      # writes docs/results_tradeoff.png

Two panels, single-concept runs: the judge's target colour+shape against prompt alignment,
and CLIP-I against CLIP-T. One point per (method, recipe, phase), the mean over its runs;
development runs (seeds 0-2) hollow, held-out runs filled; a method's line joins its development
points that no other of its points beats on both axes (its trade-off curve); the base model
as a cross: given the class word (black), told the concept in words (amber). The points on
the curves and the held-out points carry their recipe and [runs]. Drawn with PIL, as
the bench's example figure is.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from benchmarks import records  # noqa: E402

PANELS = (
    ("alignment", "fidelity_cs", "prompt alignment (editability)", "target colour+shape (fidelity)"),
    ("clip_t", "clip_i", "CLIP-T (editability)", "CLIP-I (fidelity)"),
)
COLOURS = {"none": (110, 110, 110), "hard": (200, 40, 40), "soft": (40, 90, 200)}
UNTRAINED = {"base": (0, 0, 0), "words": (150, 110, 0)}
"""The base model's points (crosses): given the class word, and told the concept in words."""
BASE_LABELS = {"base": "base model", "words": "base model, words"}
SIZE, MARGIN = 420, 60


def points(recs: list[dict], x: str, y: str) -> list[dict]:
    """Mean (x, y) per (method, recipe, phase) of the single-concept records."""
    cells: dict[tuple, list[dict]] = {}
    for r in recs:
        if r["setting"] == "single" and r["method"] != "renders":
            cells.setdefault((r["method"], r["recipe"], r["phase"]), []).append(r)

    def mean(sel, key):
        values = [r["metrics"][key] for r in sel if r["metrics"].get(key) is not None]
        return statistics.fmean(values) if values else None

    out = []
    for (method, recipe, phase), sel in sorted(cells.items()):
        mx, my = mean(sel, x), mean(sel, y)
        if mx is not None and my is not None:
            out.append({"method": method, "recipe": recipe, "phase": phase, "x": mx, "y": my, "n": len(sel)})
    return out


def frontier(pts: list[dict]) -> list[dict]:
    """The points no other point beats on both axes (the trade-off curve), by editability."""
    return sorted(
        (
            p
            for p in pts
            if not any(
                q["x"] >= p["x"] and q["y"] >= p["y"] and q is not p and (q["x"], q["y"]) != (p["x"], p["y"])
                for q in pts
            )
        ),
        key=lambda p: p["x"],
    )


def _panel(pts: list[dict], xlabel: str, ylabel: str, font) -> Image.Image:
    img = Image.new("RGB", (SIZE + 2 * MARGIN, SIZE + 2 * MARGIN), "white")
    d = ImageDraw.Draw(img)
    xs, ys = [p["x"] for p in pts] or [0, 1], [p["y"] for p in pts] or [0, 1]
    lo_x, hi_x = min(0.0, min(xs)), max(1.0 if max(xs) > 0.5 else 0.5, max(xs))
    lo_y, hi_y = min(0.0, min(ys)), max(1.0 if max(ys) > 0.5 else 0.5, max(ys))

    def at(x, y):
        return (MARGIN + (x - lo_x) / (hi_x - lo_x) * SIZE, MARGIN + SIZE - (y - lo_y) / (hi_y - lo_y) * SIZE)

    d.rectangle([MARGIN, MARGIN, MARGIN + SIZE, MARGIN + SIZE], outline="black")
    for k in range(6):
        fx, fy = lo_x + (hi_x - lo_x) * k / 5, lo_y + (hi_y - lo_y) * k / 5
        px, _ = at(fx, lo_y)
        _, py = at(lo_x, fy)
        d.line([px, MARGIN + SIZE, px, MARGIN + SIZE + 4], fill="black")
        d.text((px - 10, MARGIN + SIZE + 6), f"{fx:.1f}", fill="black", font=font)
        d.line([MARGIN - 4, py, MARGIN, py], fill="black")
        d.text((MARGIN - 30, py - 6), f"{fy:.1f}", fill="black", font=font)
    d.text((MARGIN + SIZE // 2 - 80, MARGIN + SIZE + 24), xlabel, fill="black", font=font)
    d.text((6, MARGIN - 30), ylabel, fill="black", font=font)
    for method in sorted({p["method"] for p in pts}):
        colour = UNTRAINED.get(method) or COLOURS.get(method.split("@")[0], (40, 150, 60))
        front = frontier([p for p in pts if p["method"] == method and p["phase"] == "dev"])
        if len(front) > 1:
            d.line([at(p["x"], p["y"]) for p in front], fill=colour, width=1)
        for p in (q for q in pts if q["method"] == method):
            cx, cy = at(p["x"], p["y"])
            if method in UNTRAINED:
                d.line([cx - 5, cy - 5, cx + 5, cy + 5], fill=colour, width=2)
                d.line([cx - 5, cy + 5, cx + 5, cy - 5], fill=colour, width=2)
            elif p["phase"].startswith("heldout"):
                d.rectangle([cx - 5, cy - 5, cx + 5, cy + 5], fill=colour)
            else:
                d.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], outline=colour, width=2)
            # only the curve's points and the held-out ones are named: the rest would bury them
            if method in UNTRAINED or p in front or p["phase"] != "dev":
                label = BASE_LABELS.get(method) or f"{p['recipe']} [{p['n']}]"
                d.text((cx + 6, cy - 5), label, fill=colour, font=font)
    return img


def figure(recs: list[dict]) -> Image.Image:
    font = ImageFont.load_default()
    panels = [_panel(points(recs, x, y), xl, yl, font) for x, y, xl, yl in PANELS]
    legend_h = 40
    canvas = Image.new("RGB", (sum(p.width for p in panels), panels[0].height + legend_h), "white")
    for i, p in enumerate(panels):
        canvas.paste(p, (i * p.width, legend_h))
    d = ImageDraw.Draw(canvas)
    x = 10
    for method, colour in (("none", COLOURS["none"]), ("hard", COLOURS["hard"]), ("soft", COLOURS["soft"])):
        d.ellipse([x, 14, x + 8, 22], outline=colour, width=2)
        d.text((x + 12, 12), method, fill=colour, font=font)
        x += 70
    d.text(
        (x, 12),
        "hollow: dev seeds 0-2 (line: each method's trade-off curve); filled: held-out seeds; "
        "labels (recipe [runs]) on the curves and held-out points; single-concept means",
        fill="black",
        font=font,
    )
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=Path, default=records.RECORDS)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results_tradeoff.png")
    args = parser.parse_args(argv)
    figure(records.load(args.records)).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
