"""Contact sheet of generated images beside their nearest training images (a PNG)."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

CELL = 160


def _cell(images, i: int) -> Image.Image:
    src = images.sources[i] if images.sources else None
    if src is not None:
        from ..data.images import load_image

        try:
            img = load_image(src)
            scale = CELL / max(img.size)  # small images are enlarged too
            return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                              Image.BICUBIC).convert("RGB")
        except Exception:  # noqa: BLE001 - fall back to the small grey copy read before
            pass
    small = (images.small[i] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(small, "L").resize((CELL, CELL), Image.BICUBIC).convert("RGB")


def contact_sheet(rows: list[dict], fake, train, path: str | Path, title: str, max_rows: int = 24,
                  columns: int = 3) -> Path | None:
    """One panel per item of ``rows`` (``{"fake": index, "train": index, "label": text}``): the generated
    image beside its nearest training image, names and the label under them; ``columns`` panels a row.
    None when there is nothing to show."""
    rows = rows[:max_rows]
    if not rows:
        return None
    pad, text_h = 8, 30
    panel_w, panel_h = 2 * CELL + 3 * pad, CELL + text_h + pad
    cols = min(columns, len(rows))
    n_lines = (len(rows) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * panel_w, 24 + n_lines * panel_h + pad), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 6), title[:120], fill="black")
    for k, r in enumerate(rows):
        x0, y = (k % cols) * panel_w, 24 + (k // cols) * panel_h
        for col, (images, idx) in enumerate(((fake, r["fake"]), (train, r["train"]))):
            cell = _cell(images, idx)
            x = x0 + pad + col * (CELL + pad)
            sheet.paste(cell, (x + (CELL - cell.width) // 2, y + (CELL - cell.height) // 2))
            draw.text((x, y + CELL + 2), images.names[idx][:26], fill="black")
        draw.text((x0 + pad, y + CELL + 15), r["label"][:56], fill="darkred")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
