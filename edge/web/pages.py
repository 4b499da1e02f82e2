"""The HTML of `edge web`: one page shell for the three views (the JS in static/live.js renders
each view from its JSON and keeps it live), the visitor's own page, and the refusal of a QR code
that cannot open one. Pure: values in, text out.

Every value from the line or a visitor is escaped; the view's JSON is embedded as data
(`<script type="application/json">`, `<` escaped), never as code. No inline script or style
(the pages' Content-Security-Policy forbids them): colours are SVG presentation attributes.
"""

from __future__ import annotations

import json
from functools import lru_cache
from html import escape
from string import Template
from typing import Any

from edge.config import EngravingSpec, LineConfig, Product

SHELL = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>$title</title>
<link rel="icon" href="/static/icon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/live.css">
</head>
<body class="view-$view" data-view="$view" data-stream="$stream">
<div id="banner" class="banner" role="status" hidden></div>
<header class="top"><a class="home" href="/">$line_title</a><span class="what">$what</span></header>
<main id="main">$main</main>
<script type="application/json" id="initial">$initial</script>
<script src="/static/live.js"></script>
</body>
</html>
""")

REFUSAL = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>This code cannot open a stand</title>
<link rel="stylesheet" href="/static/live.css">
</head>
<body class="view-refusal">
<header class="top"><a class="home" href="/">$line_title</a></header>
<main class="refusal">
<h1>This code cannot open a stand here</h1>
<p class="reason" data-reason="$reason">$said</p>
<p class="detail">$detail</p>
<p>Ask the team at the trailer: they can look your order up. <a href="/">See the line live</a>.</p>
</main>
</body>
</html>
""")

# What a visitor is told for each edge.orders reason (the detail follows, as the intake logs it).
REASONS = {
    "bad_format": "This is not a QR code of the trailer, or it was not read completely. Try scanning it again.",
    "bad_signature": "This code was changed or damaged: its signature does not match.",
    "unknown_key": "This code was made for another line, not this trailer.",
    "expired": "This order has expired.",
    "unknown_product": "This trailer does not make the product of this order.",
    "bad_option": "This order asks for something the line cannot make.",
    "too_long": "This code holds more than an order.",
    "not_found": "There is nothing at this address.",
}


def _json(data: Any) -> str:
    """JSON safe inside a <script> element: no `</script>`, no `<!--`."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def page(view: str, line: LineConfig, what: str, stream: str, initial: Any, main: str = "") -> str:
    """A live page: `view` (line, screen, job, visitor) rendered by the JS from `initial`, then
    kept live from the Server-Sent Events at `stream`."""
    title = f"{what} · {line.title}" if what else line.title
    return SHELL.substitute(title=escape(title), view=view, stream=escape(stream), line_title=escape(line.title),
                            what=escape(what), main=main or '<div id="live"></div>', initial=_json(initial))


def refusal(line: LineConfig, reason: str, detail: str) -> str:
    """The page of a QR code that opens nothing: which reason, in words, then the detail."""
    return REFUSAL.substitute(line_title=escape(line.title), reason=escape(reason),
                              said=escape(REASONS.get(reason, "This code cannot be read.")), detail=escape(detail))


def visitor_main(product: Product, text: str, colour: str | None, colour_rgb: str | None, svg: str | None) -> str:
    """The part of a visitor's page only their QR code opens: their text, their colour, the
    engraving as the laser will draw it. The live part (`#live`) is rendered by the JS."""
    swatch = (f'<svg class="swatch" viewBox="0 0 10 10" aria-hidden="true"><circle cx="5" cy="5" r="4.5" '
              f'fill="{escape(colour_rgb)}"/></svg>' if colour_rgb else "")
    colour_words = f'<span class="colour">{swatch}{escape(colour)}</span>' if colour else ""
    preview = (f'<figure class="engraving"><div class="engraving-face">{svg}</div>'
               '<figcaption>Your engraving, as the laser will draw it</figcaption></figure>' if svg else "")
    return (f'<section class="mine"><p class="kicker">Your {escape(product.title.lower() or product.id)}</p>'
            f'<h1 class="text" id="text">{escape(text)}</h1>{colour_words}{preview}</section>'
            '<div id="live"></div>')


def engraving_svg(spec: EngravingSpec, text: str, face: str | None) -> str | None:
    """The engraving area (mm) with `text` in the laser's single-stroke font, on the stand's
    colour `face`; None when the text cannot be engraved (the intake refuses such an order)."""
    return _engraving_svg(spec, text, face or "#d9d4c7")


@lru_cache(maxsize=512)
def _engraving_svg(spec: EngravingSpec, text: str, face: str) -> str | None:
    from firmware_bridge.engrave import EngravingArea, LaserMaterial, engrave

    try:
        area = EngravingArea.of(spec)
        drawn = engrave(text, area, LaserMaterial(1, 1))  # the strokes only: power and feed do not matter
    except ValueError:
        return None
    w, h = area.width_mm, area.height_mm
    ink = "#f4efe6" if _dark(face) else "#2b211a"  # burnt PLA darkens; on a dark body, show it light
    paths = " ".join("M" + " L".join(f"{x:.2f} {h - y:.2f}" for x, y in stroke) for stroke in drawn.strokes)
    return (f'<svg class="engraving-svg" viewBox="0 0 {w:g} {h:g}" role="img" aria-label="{escape(text)}">'
            f'<rect width="{w:g}" height="{h:g}" rx="1.5" fill="{escape(face)}"/>'
            f'<path d="{paths}" fill="none" stroke="{ink}" stroke-width="0.35" stroke-linecap="round" '
            'stroke-linejoin="round"/></svg>')


def _dark(rgb: str) -> bool:
    try:
        r, g, b = (int(rgb[i:i + 2], 16) for i in (1, 3, 5))
    except ValueError:
        return False
    return 0.299 * r + 0.587 * g + 0.114 * b < 110
