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
            img.thumbnail((CELL, CELL))
            return img.convert("RGB")
        except Exception:  # noqa: BLE001 - fall back to the small grey copy read before
            pass
    small = (images.small[i] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(small, "L").resize((CELL, CELL), Image.BICUBIC).convert("RGB")


def contact_sheet(rows: list[dict], fake, train, path: str | Path, title: str, max_rows: int = 24) -> Path | None:
    """One row per item of ``rows`` (``{"fake": index, "train": index, "label": text}``): the generated
    image, its nearest training image, and the label. None when there is nothing to show."""
    rows = rows[:max_rows]
    if not rows:
        return None
    pad, text_h = 8, 30
    width = 2 * CELL + 3 * pad
    height = 24 + len(rows) * (CELL + text_h + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 6), title[:60], fill="black")
    y = 24
    for r in rows:
        for col, (images, idx) in enumerate(((fake, r["fake"]), (train, r["train"]))):
            cell = _cell(images, idx)
            x = pad + col * (CELL + pad)
            sheet.paste(cell, (x + (CELL - cell.width) // 2, y + (CELL - cell.height) // 2))
            draw.text((x, y + CELL + 2), images.names[idx][:26], fill="black")
        draw.text((pad, y + CELL + 15), r["label"][:52], fill="darkred")
        y += CELL + text_h + pad
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
