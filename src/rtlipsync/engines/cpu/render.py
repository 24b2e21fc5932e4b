"""Drawing a mouth shape into an avatar frame with the face's own pixels.

For each avatar frame we build, once, a mouth-local coordinate grid over a region around the
mouth: ``u`` runs along the lips (-1 and +1 at the corners) and ``v`` down the face in pixels
from the line where the lips meet. A mouth shape then becomes a displacement field on that
grid: below the lip line the lower lip and jaw drop (the chin follows, the neck stretches);
above it the upper lip lifts a little; the corners move out (spread) or in (rounded) and up
or down (smile); stretched lips thin and rounded ones gather. The frame is resampled
through that field with `cv2.remap`, so skin, lips and lighting are the face's own, and the
field fades to zero before the region's edge, so there is no box. The gap that opens between
the lips is filled with a drawn mouth interior: a dark cavity shaded to the face's light,
upper teeth under the upper lip, lower teeth and tongue when wide open, edges anti-aliased.

For a still image the same machinery adds idle life: blinks (the upper lid slides down over
the eye) and a slight head sway (a soft-masked rotation about the neck).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from rtlipsync.articulation import MouthParams
from rtlipsync.face.landmarks import (
    CHIN,
    FACE_OVAL,
    LEFT_EYE_LOWER,
    LEFT_EYE_UPPER,
    LOWER_INNER,
    LOWER_OUTER,
    RIGHT_EYE_LOWER,
    RIGHT_EYE_UPPER,
    UPPER_INNER,
    UPPER_OUTER,
)

LOWER_SHARE = 0.72  # of a change in lip gap, how much the lower lip/jaw takes
MAX_GAP = 0.62  # widest lip gap, in mouth half-widths
WIDTH_SHIFT = 0.2  # corner travel for full spread/round, in mouth half-widths
# Rounding (o, u, w) pulls the corners in further than spreading pushes them out: a rounded
# mouth is visibly narrow and nearly circular, not a half-open one.
ROUND_GAIN = 1.5


def _corner_travel(width: float) -> float:
    """The corners' travel for a width parameter, in `WIDTH_SHIFT` units."""
    return width * ROUND_GAIN if width < 0 else width


SMILE_LIFT = 0.10  # corner travel for a full smile, in mouth half-widths
# Stretched lips thin (their red narrows towards the line where they meet); rounded lips
# gather and look fuller. Shares of each lip's thickness at full spread and full rounding.
THIN_SPREAD = 0.3
FULL_ROUND = 0.15
CLOSE_OVERLAP = 0.6


EDGE_PX = 1.3  # width of the interior's soft edges, in pixels
TEETH_GAP = 0.12  # lip gap (as `MouthParams.open`) that shows the upper teeth on f/v


def _lip_gap(params: MouthParams) -> float:
    """How far the lips part: the opening, or on f/v at least a strip of upper teeth."""
    return max(params.open, TEETH_GAP * params.teeth)


PRESS_RELEASE = 0.12  # opening by which lips pressed closed at rest are let go


def _press_release(params: MouthParams) -> float:
    return float(_smooth(np.array(_lip_gap(params) / PRESS_RELEASE), 0.0, 1.0))


def _smooth(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


@dataclass
class _Region:
    """A rectangle of the frame: rows y0:y1, columns x0:x1."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def _bounds(points: np.ndarray, pad: float, w: int, h: int) -> _Region:
    x0, y0 = np.floor(points.min(axis=0) - pad).astype(int)
    x1, y1 = np.ceil(points.max(axis=0) + pad).astype(int)
    return _Region(max(0, x0), max(0, y0), min(w, x1), min(h, y1))


def _edge_taper(shape: tuple[int, int], width: int = 4) -> np.ndarray:
    h, w = shape
    ys = np.minimum(np.arange(h), np.arange(h)[::-1])[:, None]
    xs = np.minimum(np.arange(w), np.arange(w)[None, ::-1])
    return np.clip(np.minimum(ys, xs) / width, 0.0, 1.0).astype(np.float32)


class MouthRig:
    """Everything about one avatar frame's mouth that does not change with the mouth shape."""

    def __init__(self, points: np.ndarray, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        p = points.astype(np.float64)
        left, right = p[UPPER_OUTER[0]], p[UPPER_OUTER[-1]]
        self.ex = (right - left) / (np.linalg.norm(right - left) + 1e-9)
        self.ey = np.array([-self.ex[1], self.ex[0]])
        self.half = float(np.linalg.norm(right - left) / 2)
        self.centre = (p[13] + p[14]) / 2

        def local(idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
            d = p[idx] - self.centre
            return d @ self.ex / self.half, d @ self.ey

        u_up, v_up = local(UPPER_INNER)
        u_lo, v_lo = local(LOWER_INNER)
        self.u_line = (u_up + u_lo) / 2
        order = np.argsort(self.u_line)
        self.u_line = self.u_line[order]
        self.v_up = v_up[order]
        self.v_lo = v_lo[order]
        self.v_line = (self.v_up + self.v_lo) / 2
        self.gap = np.maximum(self.v_lo - self.v_up, 0.0)
        self.u_inner = max(0.5, float(np.abs(self.u_line[[0, -1]]).mean()))
        # Each side's inner corner: on a turned head one is nearer the middle than the other,
        # and the lips must part (and the inside show) only up to that side's own corner.
        self.u_left = max(0.4, float(-self.u_line[0]))
        self.u_right = max(0.4, float(self.u_line[-1]))
        _, v_uo = local(UPPER_OUTER)
        _, v_lout = local(LOWER_OUTER)
        self.upper_thick = max(2.0, float(np.median(self.v_up - v_uo[order])))
        self.lower_thick = max(2.0, float(np.median(v_lout[order] - self.v_lo)))
        self.chin = max(float((p[CHIN] - self.centre) @ self.ey), 3 * self.lower_thick)

        # The region the mouth can touch: 2.5 half-widths either side, nose to below the chin.
        corners = []
        for uu, vv in (
            (-2.5, -4 * self.upper_thick),
            (2.5, -4 * self.upper_thick),
            (-2.5, 1.6 * self.chin),
            (2.5, 1.6 * self.chin),
        ):
            corners.append(self.centre + uu * self.half * self.ex + vv * self.ey)
        self.region = _bounds(np.array(corners), 2, w, h)
        r = self.region
        ys, xs = np.mgrid[r.y0 : r.y1, r.x0 : r.x1].astype(np.float32)
        self.map_x, self.map_y = xs, ys
        dx, dy = xs - self.centre[0], ys - self.centre[1]
        self.U = (dx * self.ex[0] + dy * self.ex[1]) / self.half
        self.V = dx * self.ey[0] + dy * self.ey[1]
        line = np.interp(self.U, self.u_line, self.v_line).astype(np.float32)
        self.vrel = self.V - line
        # Landmarks put the inner lips a little inside the visible gap, so "closed" presses
        # them CLOSE_OVERLAP of the upper lip's thickness further, or teeth would still peek.
        # `rest_gap` is the gap the warp closes; the drawn interior uses the same one.
        # As the mouth starts to open the press is let go (`PRESS_RELEASE`), so the lips part
        # at once rather than only once the opening has undone the press.
        profile = self.lens(self.u_line) ** 0.3
        self.press = CLOSE_OVERLAP * self.upper_thick * (self.gap > 0.5) * profile
        self.rest_gap = self.gap * profile + self.press
        gap_u = np.interp(self.U, self.u_line, self.rest_gap, left=0.0, right=0.0)
        press_u = np.interp(self.U, self.u_line, self.press, left=0.0, right=0.0)
        lens = self.lens(self.U)
        below = self.vrel >= 0
        depth = max(self.chin - float(self.v_line.mean()), 4.0)
        t = _smooth(self.vrel / depth, 0.0, 1.0)
        jaw_profile = 1.0 - _smooth(np.abs(self.U), 0.9, 2.2)
        neck = 1.0 - _smooth(self.vrel - depth, 0.0, 0.5 * depth)
        lower_open = (lens + (jaw_profile * 0.85 - lens) * t) * neck
        lower_close = gap_u * (1.0 - t)
        upper = np.exp(-((self.vrel / (1.6 * self.upper_thick)) ** 2))
        taper = _edge_taper(self.vrel.shape)
        # Vertical displacement (mouth-local, +down) = open_px * k_open + k_rest.
        self.k_open = (
            np.where(below, LOWER_SHARE * lower_open, -(1 - LOWER_SHARE) * lens * upper) * taper
        )
        self.k_rest = (
            np.where(below, -LOWER_SHARE * lower_close, (1 - LOWER_SHARE) * gap_u * upper) * taper
        )
        self.k_press = (
            np.where(below, -LOWER_SHARE * press_u * (1.0 - t), (1 - LOWER_SHARE) * press_u * upper)
            * taper
        ).astype(np.float32)
        lip_band = np.exp(-((self.vrel / (1.8 * max(self.upper_thick, self.lower_thick))) ** 2))
        along = np.clip(self.U, -1, 1) * (1.0 - _smooth(np.abs(self.U), 1.0, 2.2))
        self.k_width = (along * lip_band * self.half * WIDTH_SHIFT * taper).astype(np.float32)
        corner = _smooth(np.abs(self.U), 0.2, 1.0) * (1.0 - _smooth(np.abs(self.U), 1.1, 2.0))
        self.k_smile = (-corner * lip_band * self.half * SMILE_LIFT * taper).astype(np.float32)
        self.k_open = self.k_open.astype(np.float32)
        self.k_rest = self.k_rest.astype(np.float32)
        # Thinning: each lip's outer edge moves towards the lip line while the line itself
        # stays (zero there and beyond twice the lip's thickness; the map stays monotonic
        # because the bump's slope is well under one).
        up_reach, lo_reach = 2.5 * self.upper_thick, 2.5 * self.lower_thick
        bump = np.where(  # (the maps subtract the field: + moves the picture down)
            below,
            -self.lower_thick * np.sin(np.pi * np.clip(self.vrel / lo_reach, 0, 1)),
            self.upper_thick * np.sin(np.pi * np.clip(-self.vrel / up_reach, 0, 1)),
        )
        mid_lips = 1.0 - _smooth(np.abs(self.U), 0.6, 1.1)
        self.k_thin = (bump * mid_lips * taper).astype(np.float32)

        # Light and colour for the drawn interior, from the face's own pixels: teeth take the
        # picture's colour cast (a warm photo has warm whites) and its brightness.
        near_lips = (np.abs(self.vrel) < self.lower_thick) & (np.abs(self.U) < 0.6)
        lips = frame[r.y0 : r.y1, r.x0 : r.x1][near_lips].astype(np.float64)
        cheeks = np.round(p[[50, 280, 4, 200, 421]]).astype(int)
        skin = frame[np.clip(cheeks[:, 1], 0, h - 1), np.clip(cheeks[:, 0], 0, w - 1)].astype(
            np.float64
        )
        skin_mean = skin.mean(axis=0)
        light = float(np.clip(skin_mean.mean() / 160.0, 0.55, 1.0))
        lip_colour = lips.mean(axis=0) if len(lips) else np.array([90.0, 90.0, 160.0])
        # The inside of a mouth is a dark, warm red-brown (BGR), from the lips' own colour.
        self.cavity = np.clip(lip_colour * np.array([0.16, 0.17, 0.30]) + 4, 0, 255) * light
        self.throat = self.cavity * 0.45
        cast = skin_mean / max(skin_mean.max(), 1.0) * 235.0
        # Teeth inside a mouth sit in the lips' shade: a little under the face's own light.
        self.teeth = np.clip(
            (0.5 * np.array([226.0, 232.0, 236.0]) + 0.5 * cast) * light * 0.9, 0, 255
        )
        self.tongue = np.clip(lip_colour * 0.75 + np.array([0, 10, 40]), 0, 255) * light
        self.inner_lip = np.clip(lip_colour * 0.62, 0, 255)  # the lips' wet inner side
        self.tooth_px = max(2.0, 0.36 * self.half)  # width of a front tooth

    def lens(self, u: np.ndarray) -> np.ndarray:
        """How far the lips part along the mouth: 1 in the middle, 0 at the inner corners."""
        u = np.asarray(u)
        reach = np.where(u < 0, self.u_left, self.u_right)
        return np.clip(1.0 - (u / reach) ** 2, 0.0, 1.0) ** 0.65

    def displacement(self, params: MouthParams) -> tuple[np.ndarray, np.ndarray]:
        """Image-space (dx, dy) over `region` for a mouth shape, as the backward map offsets."""
        open_px = _lip_gap(params) * MAX_GAP * self.half
        d_v = cv2.scaleAdd(self.k_open, open_px, self.k_rest)
        release = _press_release(params)
        if release > 0 and self.press.any():
            d_v = cv2.scaleAdd(self.k_press, -release, d_v)
        if params.smile:
            d_v = d_v + params.smile * self.k_smile
        thin = THIN_SPREAD * max(params.width, 0.0) - FULL_ROUND * max(-params.width, 0.0)
        if thin:
            d_v = cv2.scaleAdd(self.k_thin, thin, d_v)
        d_u = _corner_travel(params.width) * self.k_width
        if params.smile > 0:
            d_u = d_u + 0.5 * params.smile * self.k_width
        dx = d_u * self.ex[0] + d_v * self.ey[0]
        dy = d_u * self.ex[1] + d_v * self.ey[1]
        return dx, dy

    def draw_interior(
        self, roi: np.ndarray, params: MouthParams, offset: tuple[float, float] = (0.0, 0.0)
    ) -> None:
        """Paint the mouth's inside into the warped region ``roi`` (in place).

        ``offset`` moves the mouth by that many pixels (the head sway of still avatars): the
        mouth-local coordinates are linear in the pixel position, so a move is a shift of them.
        """
        open_px = _lip_gap(params) * MAX_GAP * self.half
        if open_px < 0.6:
            return
        target = open_px * self.lens(self.u_line)
        change = target - self.rest_gap + _press_release(params) * self.press
        top = self.v_up - (1 - LOWER_SHARE) * change
        bottom = self.v_lo + LOWER_SHARE * change
        # Corners move with the width field; move the interior's u the same way.
        travel = _corner_travel(params.width) * WIDTH_SHIFT
        u_new = self.u_line + travel * np.clip(self.u_line, -1, 1)
        # The interior's bounding box in region pixels, from its outline.
        ox, oy = offset
        outline = np.concatenate([np.stack([u_new, top], 1), np.stack([u_new, bottom], 1)])
        xy = (
            self.centre
            + outline[:, :1] * self.half * self.ex
            + outline[:, 1:] * self.ey
            + (ox, oy)
            - (self.region.x0, self.region.y0)
        )
        xa, ya = np.maximum(np.floor(xy.min(axis=0)).astype(int) - 1, 0)
        xb, yb = np.ceil(xy.max(axis=0)).astype(int) + 2
        xb, yb = min(xb, roi.shape[1]), min(yb, roi.shape[0])
        if xb <= xa or yb <= ya:
            return
        du = (ox * self.ex[0] + oy * self.ex[1]) / self.half
        dv = ox * self.ey[0] + oy * self.ey[1]
        U = self.U[ya:yb, xa:xb] - du
        V = self.V[ya:yb, xa:xb] - dv
        lip_top = np.interp(U, u_new, top)
        lip_bot = np.interp(U, u_new, bottom)
        inside_u = (U >= u_new[0]) & (U <= u_new[-1])
        gap = np.where(inside_u, lip_bot - lip_top, 0.0)
        # Edges a little over a pixel wide: the lips' inner edge is soft, never an outline.
        alpha = (
            np.clip((V - lip_top) / EDGE_PX + 0.5, 0, 1)
            * np.clip((lip_bot - V) / EDGE_PX + 0.5, 0, 1)
            * (gap > 0.3)
        )
        if not alpha.any():
            return
        depth = np.clip((V - lip_top) / np.maximum(gap, 1e-3), 0, 1)
        side = np.clip(np.abs(U) / self.u_inner, 0, 1)
        shade = (1.0 - 0.6 * np.sin(np.pi * depth) * (1 - side**2))[..., None]
        colour = self.cavity * shade + self.throat * (1 - shade)
        # The wet inner side of the lips turns into the dark of the mouth over a short
        # distance (soft falloff), rather than the cavity starting at the lip line.
        edge_w = np.maximum(1.2, 0.22 * gap)
        near = np.exp(-np.minimum(V - lip_top, lip_bot - V).clip(0) / edge_w)[..., None]
        colour = colour * (1 - near) + self.inner_lip * near
        # Upper teeth: a band under the upper lip, narrower than the mouth, shaded at the sides,
        # in the lip's shadow at the top, with faint gaps between the front teeth.
        tooth_h = np.minimum(0.40 * gap, 0.30 * self.half)
        # On f and v the lower lip comes up to the upper teeth: the gap is all teeth.
        tooth_h = tooth_h + params.teeth * (gap - tooth_h)
        teeth_a = np.clip((lip_top + tooth_h - V) / EDGE_PX + 0.5, 0, 1) * (
            1 - _smooth(side, 0.4, 0.9)
        )
        down = np.clip((V - lip_top) / np.maximum(tooth_h, 1e-3), 0, 1)
        # The upper lip overhangs the teeth: their top is in its shadow, the side teeth
        # recede into the dark, and the biting edges catch a little less light.
        tooth_shade = 1.0 - 0.45 * side**2 - 0.45 * np.exp(-((down / 0.3) ** 2)) - 0.15 * down**4
        # Separate teeth: dark seams between them, each a little rounded at its biting edge
        # and not quite the same shade as its neighbour.
        pos = np.abs(U * self.half / self.tooth_px)
        seams = np.abs(pos % 1 - 0.5)
        tooth_shade = tooth_shade * (1 - 0.3 * np.exp(-((seams - 0.5) ** 2) / 0.006))
        tooth_shade = tooth_shade * (1 - 0.06 * (np.floor(pos) % 2))
        scallop = 1.0 - 0.12 * (2 * seams) ** 2  # the edge rises towards each seam
        teeth_a = teeth_a * np.clip((lip_top + tooth_h * scallop - V) / EDGE_PX + 0.5, 0, 1)
        teeth = self.teeth * np.clip(tooth_shade, 0.3, 1.0)[..., None]
        # Lower teeth and tongue only show when the mouth is well open.
        wide = float(_smooth(np.array(open_px / self.half), 0.25, 0.55))
        if wide > 0:
            low_h = np.minimum(0.14 * gap, 0.12 * self.half)
            low_a = np.clip(V - (lip_bot - low_h) + 0.5, 0, 1) * (1 - _smooth(side, 0.25, 0.55))
            tongue_r = (U / (0.55 * self.u_inner)) ** 2 + (
                (V - lip_bot) / np.maximum(0.45 * gap, 1)
            ) ** 2
            tongue_a = np.clip((1 - tongue_r) * 3, 0, 1)[..., None] * 0.55 * wide
            # The tongue's back falls away into the dark; its tip catches the light.
            tongue = self.tongue * (0.55 + 0.45 * np.clip(1.2 - tongue_r, 0, 1))[..., None]
            colour = colour * (1 - tongue_a) + tongue * tongue_a
            # Lower teeth: smaller than the upper ones, with their own seams, in shadow.
            low_pos = np.abs(U * self.half / (0.75 * self.tooth_px))
            low_seams = np.abs(low_pos % 1 - 0.5)
            low_shade = (1 - 0.35 * np.exp(-((low_seams - 0.5) ** 2) / 0.008)) * (1 - 0.4 * side**2)
            low_a = (low_a * wide * 0.8)[..., None]
            colour = colour * (1 - low_a) + (self.teeth * 0.7 * low_shade[..., None]) * low_a
        colour = colour * (1 - teeth_a[..., None]) + teeth * teeth_a[..., None]
        patch = roi[ya:yb, xa:xb].astype(np.float32)
        a = alpha[..., None]
        roi[ya:yb, xa:xb] = np.clip(patch * (1 - a) + colour * a, 0, 255).astype(np.uint8)


class EyeRig:
    """One eye's blink: the upper lid comes down over the eye's opening and nothing else moves.

    The lid is drawn, not warped: warping the skin above the eye down would drag everything
    near it too (a glasses rim just above the lid bends into the eye, "melting glasses").
    The closed lid's skin is the eye opening filled in from its surroundings (inpainting,
    once per frame rig); a blink uncovers it from the top down to the level the lid has
    reached, with a dark lash line along its edge.
    """

    LASH_DARKEN = 0.55  # how dark the lash line is at the lid's edge

    def __init__(
        self,
        points: np.ndarray,
        upper: list[int],
        lower: list[int],
        frame: np.ndarray,
    ) -> None:
        p = points.astype(np.float64)
        a, b = p[upper[0]], p[upper[-1]]
        self.ex = (b - a) / (np.linalg.norm(b - a) + 1e-9)
        if self.ex[0] < 0:
            self.ex = -self.ex
        self.ey = np.array([-self.ex[1], self.ex[0]])
        self.centre = (a + b) / 2
        self.half = float(np.linalg.norm(b - a) / 2)

        def local(idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
            d = p[idx] - self.centre
            return d @ self.ex / self.half, d @ self.ey

        uu, vu = local(upper)
        ul, vl = local(lower)
        ou, ol = np.argsort(uu), np.argsort(ul)
        uu, vu, ul, vl = uu[ou], vu[ou], ul[ol], vl[ol]
        h, w = frame.shape[:2]
        corners = np.vstack([p[upper], p[lower]])
        self.region = _bounds(corners, 3, w, h)
        r = self.region
        self.lid_top = self.lid_bottom = self.closed = None
        if r.x1 - r.x0 < 3 or r.y1 - r.y0 < 3:
            return
        ys, xs = np.mgrid[r.y0 : r.y1, r.x0 : r.x1].astype(np.float64)
        dx, dy = xs - self.centre[0], ys - self.centre[1]
        self.U = (dx * self.ex[0] + dy * self.ex[1]) / self.half
        self.V = dx * self.ey[0] + dy * self.ey[1]
        self.lid_top = np.interp(self.U, uu, vu)
        self.lid_bottom = np.maximum(np.interp(self.U, ul, vl), self.lid_top)
        self.across = _smooth(1.0 - np.abs(self.U), 0.0, 0.12)  # fades out at the corners
        opening = (self.V >= self.lid_top - 1.0) & (self.V <= self.lid_bottom + 1.0)
        hole = (opening & (np.abs(self.U) <= 1.05)).astype(np.uint8) * 255
        hole = cv2.dilate(hole, np.ones((3, 3), np.uint8))
        patch = np.ascontiguousarray(frame[r.y0 : r.y1, r.x0 : r.x1])
        self.closed = cv2.inpaint(patch, hole, 3, cv2.INPAINT_TELEA).astype(np.float32)

    def apply(self, image: np.ndarray, blink: float) -> None:
        """Draw the lid ``blink`` (0 open .. 1 shut) of the way down, in place."""
        if self.closed is None or blink <= 0:
            return
        r = self.region
        edge = self.lid_top + blink * (self.lid_bottom - self.lid_top)
        covered = (np.clip(edge - self.V + 0.5, 0.0, 1.0) * self.across)[..., None]
        covered *= (self.V >= self.lid_top - 1.5)[..., None]
        lash = np.exp(-(((self.V - edge) / 1.2) ** 2)) * self.across * min(1.0, 3.0 * blink)
        roi = image[r.y0 : r.y1, r.x0 : r.x1].astype(np.float32)
        out = roi * (1.0 - covered) + self.closed * covered
        out *= (1.0 - self.LASH_DARKEN * lash)[..., None]
        image[r.y0 : r.y1, r.x0 : r.x1] = np.clip(out, 0, 255).astype(np.uint8)


class FrameRig:
    """A frame's mouth rig, plus (for still avatars) eyes and head sway over a head region."""

    def __init__(self, points: np.ndarray, frame: np.ndarray, idle_life: bool) -> None:
        self.mouth = MouthRig(points, frame)
        self.idle_life = idle_life
        h, w = frame.shape[:2]
        if not idle_life:
            self.region = self.mouth.region
            return
        oval = points[FACE_OVAL].astype(np.float64)
        top = points[FACE_OVAL[0]]
        chin = points[CHIN]
        face_h = float(np.linalg.norm(chin - top))
        head = np.vstack(
            [
                oval,
                oval.min(axis=0) - [0.25 * face_h, 0.45 * face_h],
                oval.max(axis=0) + [0.25 * face_h, 0.30 * face_h],
            ]
        )
        self.region = _bounds(head, 4, w, h)
        m = self.mouth.region
        r = self.region
        self.region = _Region(min(r.x0, m.x0), min(r.y0, m.y0), max(r.x1, m.x1), max(r.y1, m.y1))
        r = self.region
        ys, xs = np.mgrid[r.y0 : r.y1, r.x0 : r.x1].astype(np.float32)
        self.map_x, self.map_y = xs, ys
        # Head sway: rotation about the neck, weighted by a soft mask of the head.
        self.pivot = chin + np.array([0.0, 0.35 * face_h])
        centre = oval.mean(axis=0)
        radii = (oval.max(axis=0) - oval.min(axis=0)) / 2 * np.array([1.25, 1.35])
        dist = np.sqrt(
            ((xs - centre[0]) / radii[0]) ** 2 + ((ys - centre[1] + 0.1 * face_h) / radii[1]) ** 2
        )
        self.head_w = ((1.0 - _smooth(dist, 0.85, 1.25)) * _edge_taper(r.shape, 6)).astype(
            np.float32
        )
        # Backward-map offsets per radian of sway (small-angle rotation about the pivot).
        self.rot_x = (-self.head_w * (ys - self.pivot[1])).astype(np.float32)
        self.rot_y = (self.head_w * (xs - self.pivot[0])).astype(np.float32)
        self.eyes = [
            EyeRig(points, upper, lower, frame)
            for upper, lower in (
                (LEFT_EYE_UPPER, LEFT_EYE_LOWER),
                (RIGHT_EYE_UPPER, RIGHT_EYE_LOWER),
            )
        ]

    @property
    def nbytes(self) -> int:
        """Memory held by the rig's arrays."""
        arrays = [*vars(self).values(), *vars(self.mouth).values()]
        for eye in getattr(self, "eyes", []):
            arrays += list(vars(eye).values())
        return sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))

    def render(
        self,
        frame: np.ndarray,
        params: MouthParams,
        blink: float = 0.0,
        sway: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> np.ndarray:
        """Return a copy of ``frame`` showing ``params`` (and, for stills, blink and sway)."""
        out = frame.copy()
        r = self.region
        m = self.mouth.region
        mdx, mdy = self.mouth.displacement(params)
        source = frame
        if self.idle_life:
            if blink > 0:
                # The lids are drawn on the still first; the sway then carries them with
                # the head. Only the eyes' openings change.
                source = frame.copy()
                for eye in self.eyes:
                    eye.apply(source, blink)
            # One fused pass per term (cv2.scaleAdd): this runs 25 times a second per session.
            angle, tx, ty = sway
            map_x = cv2.scaleAdd(self.rot_x, -angle, self.map_x)
            map_y = cv2.scaleAdd(self.rot_y, -angle, self.map_y)
            map_x = cv2.scaleAdd(self.head_w, -tx, map_x)
            map_y = cv2.scaleAdd(self.head_w, -ty, map_y)
            sl = (slice(m.y0 - r.y0, m.y1 - r.y0), slice(m.x0 - r.x0, m.x1 - r.x0))
            map_x[sl] -= mdx
            map_y[sl] -= mdy
        else:
            map_x, map_y = self.mouth.map_x - mdx, self.mouth.map_y - mdy
        warped = cv2.remap(source, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mouth_roi = warped[m.y0 - r.y0 : m.y1 - r.y0, m.x0 - r.x0 : m.x1 - r.x0]
        offset = (0.0, 0.0)
        if self.idle_life:
            # The interior moves with the head: shift it by the sway at the mouth's centre.
            angle, tx, ty = sway
            c = self.mouth.centre
            offset = (-angle * (c[1] - self.pivot[1]) + tx, angle * (c[0] - self.pivot[0]) + ty)
        self.mouth.draw_interior(mouth_roi, params, offset)
        out[r.y0 : r.y1, r.x0 : r.x1] = warped
        return out


class IdleLife:
    """Blinks and a slow head sway for still avatars, deterministic per avatar name."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self._rng = rng
        self._next_blink = float(rng.uniform(1.0, 3.0))
        self._blink_start = -10.0
        self._phases = rng.uniform(0, 2 * math.pi, 6)

    def at(self, t: float, speaking_level: float = 0.0) -> tuple[float, tuple[float, float, float]]:
        """(blink 0..1, (angle rad, tx px, ty px)) at time ``t`` seconds."""
        if t >= self._next_blink:
            self._blink_start = self._next_blink
            self._next_blink = t + float(self._rng.uniform(2.5, 5.5))
        bt = t - self._blink_start
        if bt < 0.07:
            blink = bt / 0.07
        elif bt < 0.11:
            blink = 1.0
        elif bt < 0.24:
            blink = 1.0 - (bt - 0.11) / 0.13
        else:
            blink = 0.0
        ph = self._phases
        angle = math.radians(
            0.9 * math.sin(2 * math.pi * 0.11 * t + ph[0])
            + 0.4 * math.sin(2 * math.pi * 0.23 * t + ph[1])
        )
        tx = 1.4 * math.sin(2 * math.pi * 0.07 * t + ph[2]) + 0.5 * math.sin(
            2 * math.pi * 0.19 * t + ph[3]
        )
        ty = 0.9 * math.sin(2 * math.pi * 0.09 * t + ph[4]) + 0.6 * speaking_level * math.sin(
            2 * math.pi * 1.7 * t + ph[5]
        )
        return blink, (angle, tx, ty)
