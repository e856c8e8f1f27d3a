"""Which bands feed the model, and the experimental cross-modal views.

By default both SimCLR views see every band (after ``--bands``) and colour jitter acts on the
``--rgb-bands``. With ``--views rgb,uv`` the two views of an image come from different band
groups (``--band-group uv=3``; ``rgb`` = the RGB bands and ``all`` = every band are predefined):
the positive pair is the same specimen seen in two modalities. Groups are repeated cyclically to
the size K of the largest group (a 1-band UV group becomes three equal channels), so one backbone
with K input channels sees both; stage 4 embeds the first group.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..cli import UserError
from ..models import channel_stats


def parse_bands(text: str | None) -> list[int] | None:
    """'0,1,2' -> [0, 1, 2]."""
    if text is None:
        return None
    try:
        return [int(b) for b in str(text).split(",") if b.strip() != ""]
    except ValueError:
        raise UserError(f"band list {text!r} must be comma-separated numbers, e.g. 0,1,2") from None


@dataclass
class ViewPlan:
    """Model input layout.

    Attributes:
        in_chans: channels K the backbone takes.
        names: group name per view.
        bands: per view, K indices into the loaded channels.
        rgb: per view, positions (within the K) of R, G, B, or [] when the view has no colour.
    """

    in_chans: int
    names: list[str]
    bands: list[list[int]]
    rgb: list[list[int]]

    @property
    def cross_modal(self) -> bool:
        return self.bands[0] != self.bands[1]

    def stats(self, view: int, backbone: str | None = None) -> tuple[list[float], list[float]]:
        """Normalisation of view ``view``'s bands for ``backbone`` (its pretraining statistics)."""
        return channel_stats(self.in_chans, self.rgb[view], backbone)


def plan_views(channels: int, rgb_bands: str | None = None, views: str | None = None,
               groups: list[str] | None = None) -> ViewPlan:
    """Resolve ``--rgb-bands``, ``--views`` and ``--band-group`` for data with ``channels`` bands."""
    rgb = parse_bands(rgb_bands) if rgb_bands is not None else ([0, 1, 2] if channels >= 3 else [])
    if any(not 0 <= b < channels for b in rgb) or len(rgb) not in (0, 3):
        raise UserError(f"--rgb-bands {rgb_bands} must name 3 of the {channels} bands (numbered 0-"
                        f"{channels - 1}), or be empty")
    defined = {"all": list(range(channels))}
    if rgb:
        defined["rgb"] = rgb
    for item in groups or []:
        name, sep, spec = item.partition("=")
        if not sep or not name:
            raise UserError(f"--band-group {item!r} must look like name=3 or name=4,5,6")
        defined[name] = parse_bands(spec)
    if not views:
        return ViewPlan(channels, ["all", "all"], [defined["all"]] * 2, [rgb] * 2)
    names = views.split(",")
    if len(names) != 2 or any(n not in defined for n in names):
        raise UserError(f"--views {views} needs two group names out of {', '.join(defined)} "
                        "(define more with --band-group name=bands)")
    for name in names:
        bad = [b for b in defined[name] if not 0 <= b < channels]
        if bad or not defined[name]:
            raise UserError(f"band group {name} asks for band {bad[0] if bad else '(none)'} but the "
                            f"data has {channels} bands (numbered 0-{channels - 1})")
    k = max(len(defined[n]) for n in names)
    bands = [[defined[n][i % len(defined[n])] for i in range(k)] for n in names]
    colour = [[0, 1, 2] if rgb and b[:3] == rgb else [] for b in bands]
    return ViewPlan(k, names, bands, colour)
