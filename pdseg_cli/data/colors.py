"""``--bg``'s colours: names, ``#hex`` and ``r,g,b``.

Apart from :mod:`pdseg_cli.data.transforms`, which imports torch: a ``--skip-existing`` poll reads
the composite's background (it is in the outputs' marks) before torch is needed.
"""

from __future__ import annotations

# CSS/X11 colour names most often asked for as a background; anything else is given as #hex
_COLOR_NAMES = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "red": (255, 0, 0),
    "green": (0, 128, 0),
    "lime": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "orange": (255, 165, 0),
    "purple": (128, 0, 128),
}


def parse_color(text: str) -> tuple[int, int, int]:
    """'white', '#fff', '#00ff00' or '0,255,0' -> (r, g, b).

    Raises:
        ValueError: not a colour; the message lists the accepted forms.
    """
    t = text.strip().lower()
    if t in _COLOR_NAMES:
        return _COLOR_NAMES[t]
    hexpart = t[1:] if t.startswith("#") else t
    if len(hexpart) in (3, 6) and all(c in "0123456789abcdef" for c in hexpart):
        if len(hexpart) == 3:
            hexpart = "".join(c * 2 for c in hexpart)
        return (int(hexpart[0:2], 16), int(hexpart[2:4], 16), int(hexpart[4:6], 16))
    parts = t.split(",")
    if len(parts) == 3 and all(p.strip().isdigit() for p in parts):
        r, g, b = (int(p) for p in parts)
        if max(r, g, b) > 255:
            raise ValueError(f"not a colour: {text!r} (each of r,g,b is 0..255)")
        return (r, g, b)
    raise ValueError(
        f"not a colour: {text!r} (use a name such as {', '.join(list(_COLOR_NAMES)[:5])}, "
        "#rrggbb, #rgb or r,g,b)"
    )
