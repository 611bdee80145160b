"""Evaluation: metrics (CLIP-I, CLIP-T, KID, attention IoU) over features (feature models),
judge_scores (TinyWorld scene scores), heatmap (overlays and grids), scoring (shared with the
Score Images node), localization (token maps on images with known masks)."""
