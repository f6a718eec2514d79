"""The decoding report: one self-contained HTML page with the metrics table and image grids (PNG data URIs)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neuroattn.io.atomic import atomic_path, atomic_write_text

CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 1100px; }
table.metrics { border-collapse: collapse; margin: 1em 0; }
table.metrics td, table.metrics th { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
table.metrics td:first-child, table.metrics th:first-child { text-align: left; }
.banner { background: #b00020; color: white; padding: 12px; font-weight: bold; font-size: 1.2em; }
.grid td { padding: 2px; text-align: center; font-size: 0.8em; }
.grid img { width: 96px; height: 96px; image-rendering: pixelated; }
.hit { outline: 3px solid #2e7d32; }
"""


def png_data_uri(image: np.ndarray) -> str:
    """A uint8 (H, W, 3) image as a ``data:image/png;base64,...`` URI."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def metrics_table(metrics: Mapping[str, float], chance: Mapping[str, float], noise_ceiling: float | None) -> str:
    """HTML table: metric | value | chance, with the noise ceiling as its own row when known."""
    rows = ["<tr><th>metric</th><th>value</th><th>chance</th></tr>"]
    for name, value in metrics.items():
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{_fmt(value)}</td><td>{_fmt(chance.get(name))}</td></tr>")
    if noise_ceiling is not None:
        rows.append(
            f"<tr><td>noise ceiling (explainable variance of the test responses)</td><td>{_fmt(noise_ceiling)}</td>"
            "<td>—</td></tr>"
        )
    return '<table class="metrics">' + "".join(rows) + "</table>"


def image_grid(
    seen: np.ndarray,
    retrieved: np.ndarray,
    retrieved_hit: np.ndarray,
    reconstructions: np.ndarray | None,
) -> str:
    """HTML table, a row per example: seen image | top-k retrieved (true match outlined) | reconstruction.

    Parameters
    ----------
    seen : (E, H, W, 3) uint8
    retrieved : (E, k, H, W, 3) uint8
    retrieved_hit : (E, k) bool, True where the retrieved image is the seen one
    reconstructions : (E, H, W, 3) uint8, optional
    """
    k = retrieved.shape[1]
    head = "<tr><th>seen</th>" + "".join(f"<th>top-{j + 1}</th>" for j in range(k))
    head += "<th>reconstruction</th></tr>" if reconstructions is not None else "</tr>"
    rows = [head]
    for e in range(len(seen)):
        cells = [f'<td><img src="{png_data_uri(seen[e])}" alt="seen {e}"></td>']
        for j in range(k):
            cls = ' class="hit"' if retrieved_hit[e, j] else ""
            cells.append(f'<td><img{cls} src="{png_data_uri(retrieved[e, j])}" alt="retrieved {j + 1}"></td>')
        if reconstructions is not None:
            cells.append(f'<td><img src="{png_data_uri(reconstructions[e])}" alt="reconstruction {e}"></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return '<table class="grid">' + "".join(rows) + "</table>"


def write_report(
    path: str | Path,
    result: Mapping[str, Any],
    grid_html: str,
    untrained_parts: Sequence[str],
) -> Path:
    """Write the decoding report for one decoder's ``result`` (as returned by ``evaluate_decoder``)."""
    title = f"Decoding report: {result['decoder']}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body>"]
    if untrained_parts:
        parts.append(
            '<div class="banner">UNTRAINED: ' + html.escape(", ".join(untrained_parts))
            + " use random weights; these numbers and images say nothing about decoding quality.</div>"
        )
    parts.append(f"<h1>{html.escape(title)}</h1>")
    parts.append(f"<p>{result['n_test']} test items; retrieval pools of {result['pool_size']} "
                 f"({result['n_draws']} random draws), top-k among all test images.</p>")
    parts.append(metrics_table(result["metrics"], result["chance"], result.get("noise_ceiling")))
    parts.append("<h2>Examples: seen | retrieved (true match outlined) | reconstruction</h2>")
    parts.append(grid_html)
    parts.append("</body></html>")
    return atomic_write_text(path, "\n".join(parts) + "\n")


def save_retrieval_grid(
    images: np.ndarray,
    found: np.ndarray,
    seen_ids: np.ndarray | None,
    path: str | Path,
    *,
    untrained: bool = False,
    max_rows: int = 16,
) -> Path:
    """PNG montage: a row per query, the seen image (when known) then its top-k retrieved images.

    ``images`` (M, H, W, 3) uint8 is the stimulus set; ``found`` (N, k) stimulus ids; matches get a green frame,
    and an UNTRAINED strip heads the image when the decoder or its targets are untrained.
    """
    from PIL import Image, ImageDraw

    rows = min(max_rows, len(found))
    h, w = images.shape[1:3]
    pad = 4
    lead = 0 if seen_ids is None else 1
    cols = lead + found.shape[1]
    top = 18 if untrained else 0
    canvas = Image.new("RGB", (cols * (w + pad) + pad, top + rows * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if untrained:
        draw.rectangle([0, 0, canvas.width, top - 2], fill=(176, 0, 32))
        draw.text((pad, 3), "UNTRAINED weights: not a decoding result", fill="white")
    for r in range(rows):
        y = top + pad + r * (h + pad)
        tiles = ([] if seen_ids is None else [int(seen_ids[r])]) + [int(i) for i in found[r]]
        for c, image_id in enumerate(tiles):
            x = pad + c * (w + pad)
            canvas.paste(Image.fromarray(images[image_id]), (x, y))
            if seen_ids is not None and c >= lead and image_id == int(seen_ids[r]):
                draw.rectangle([x - 2, y - 2, x + w + 1, y + h + 1], outline=(46, 125, 50), width=2)
    with atomic_path(Path(path)) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)
