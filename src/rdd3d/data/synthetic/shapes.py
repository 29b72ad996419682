"""Geometric primitives of the synthetic world and their vectorised ray intersection.

Every solid in a scene (object parts, distractors) is one row of a :class:`Primitives`
table. A row is a box, a vertical frustum (truncated cone, a cylinder when its taper is 1)
or an ellipsoid, described the same way: the centre of its own bounding box, the extent of
that bounding box along its local x, y, z (``size``), and a yaw about +z. The ray caster
asks :func:`intersect` for many (primitive, ray) pairs at once; the only Python loop is
over the three primitive kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple, Sequence

import numpy as np

#: Hits closer than this along a ray are ignored (a ray never starts inside a solid).
MIN_HIT_DISTANCE = 1e-4


class Kind(IntEnum):
    BOX = 0
    FRUSTUM = 1  # vertical; size = (2 r_bottom, 2 r_bottom, height); taper = r_top / r_bottom
    ELLIPSOID = 2  # size = the three diameters


class Part(NamedTuple):
    """One primitive in its actor's frame (axis-aligned there: the actor's yaw turns it)."""

    kind: Kind
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    reflectivity: float
    taper: float = 1.0


def box(center, size, reflectivity: float) -> Part:
    return Part(Kind.BOX, tuple(center), tuple(size), reflectivity)


def frustum(base_center, radius_bottom: float, radius_top: float, height: float, reflectivity: float) -> Part:
    """A vertical truncated cone standing on ``base_center`` (radius_top <= radius_bottom)."""
    if not 0 <= radius_top <= radius_bottom:
        raise ValueError(f"frustum needs 0 <= radius_top <= radius_bottom, got {radius_top}, {radius_bottom}")
    x, y, z = base_center
    diameter = 2 * radius_bottom
    return Part(Kind.FRUSTUM, (x, y, z + height / 2), (diameter, diameter, height), reflectivity,
                radius_top / radius_bottom)


def ellipsoid(center, size, reflectivity: float) -> Part:
    return Part(Kind.ELLIPSOID, tuple(center), tuple(size), reflectivity)


@dataclass(frozen=True)
class Primitives:
    """A table of ``P`` primitives in one frame (see the module docstring)."""

    kind: np.ndarray  # (P,) int8, a Kind
    center: np.ndarray  # (P, 3) centre of the primitive's bounding box
    size: np.ndarray  # (P, 3) extent along the primitive's local x, y, z
    yaw: np.ndarray  # (P,) radians, counter-clockwise about +z
    taper: np.ndarray  # (P,) top / bottom radius of a frustum; 1 for the other kinds
    reflectivity: np.ndarray  # (P,) surface reflectivity in [0, 1]
    owner: np.ndarray  # (P,) int64 index of the actor the primitive belongs to

    @classmethod
    def from_parts(cls, parts: Sequence[Part], owner: np.ndarray) -> "Primitives":
        """Stack parts (in their actor's frame: yaw 0) into a table; ``owner`` (P,) names each one's actor."""
        return cls(
            kind=np.array([p.kind for p in parts], np.int8).reshape(-1),
            center=np.array([p.center for p in parts], np.float64).reshape(-1, 3),
            size=np.array([p.size for p in parts], np.float64).reshape(-1, 3),
            yaw=np.zeros(len(parts)),
            taper=np.array([p.taper for p in parts], np.float64).reshape(-1),
            reflectivity=np.array([p.reflectivity for p in parts], np.float64).reshape(-1),
            owner=np.asarray(owner, np.int64).reshape(-1),
        )

    def __len__(self) -> int:
        return self.kind.shape[0]

    @property
    def bounding_radius(self) -> np.ndarray:  # (P,) radius of a sphere around the centre holding the solid
        return 0.5 * np.linalg.norm(self.size, axis=1)

    def placed(self, position: np.ndarray, yaw: np.ndarray) -> "Primitives":
        """Turn each row by ``yaw`` (P,) about its frame's origin, then add ``position`` (P, 3)."""
        rotated = rotate_z(self.center, np.cos(yaw), np.sin(yaw))
        return self._with(center=rotated + position, yaw=self.yaw + yaw)

    def translated(self, offset: np.ndarray) -> "Primitives":
        """Shift every row by ``offset`` (P, 3) or (3,)."""
        return self._with(center=self.center + offset)

    def _with(self, **changes) -> "Primitives":
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values.update(changes)
        return Primitives(**values)


def rotate_z(vectors: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate (K, 3) vectors counter-clockwise about +z by the angle whose cos/sin are given ((K,) or scalars)."""
    x, y = vectors[:, 0], vectors[:, 1]
    return np.stack([x * cos - y * sin, x * sin + y * cos, vectors[:, 2]], axis=1)


def intersect(
    primitives: Primitives,
    origin: np.ndarray,  # (3,) common origin of the rays
    directions: np.ndarray,  # (R, 3) unit vectors
    pair_primitive: np.ndarray,  # (K,) primitive of each pair to test
    pair_ray: np.ndarray,  # (K,) ray of each pair to test
) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the first hit and the cosine of the incidence angle for each pair.

    Returns ``(t, cos)``, both (K,); ``t`` is ``inf`` where the ray misses the primitive.
    """
    yaw = primitives.yaw[pair_primitive]
    cos_yaw, minus_sin_yaw = np.cos(yaw), -np.sin(yaw)  # world -> local turns by -yaw
    local_origin = rotate_z(origin[None, :] - primitives.center[pair_primitive], cos_yaw, minus_sin_yaw)  # (K, 3)
    local_direction = rotate_z(directions[pair_ray], cos_yaw, minus_sin_yaw)  # (K, 3)
    half = primitives.size[pair_primitive] / 2
    taper = primitives.taper[pair_primitive]

    t = np.full(len(pair_primitive), np.inf)
    cos = np.zeros(len(pair_primitive))
    kinds = primitives.kind[pair_primitive]
    for kind, solver in _SOLVERS.items():
        rows = np.flatnonzero(kinds == kind)
        if rows.size:
            t[rows], cos[rows] = solver(local_origin[rows], local_direction[rows], half[rows], taper[rows])
    return t, cos


def _box_hits(origin, direction, half, _taper):
    """Slab method for an axis-aligned box centred on the local origin."""
    safe = np.where(np.abs(direction) < 1e-12, 1e-12, direction)
    t1, t2 = (-half - origin) / safe, (half - origin) / safe  # (K, 3)
    t_enter = np.minimum(t1, t2)
    near, far = t_enter.max(axis=1), np.maximum(t1, t2).min(axis=1)
    hit = (near <= far) & (near > MIN_HIT_DISTANCE)
    entry_axis = t_enter.argmax(axis=1)  # the face the ray enters through
    cos = np.abs(direction[np.arange(len(direction)), entry_axis])
    return np.where(hit, near, np.inf), cos


def _frustum_hits(origin, direction, half, taper):
    """Vertical truncated cone: side surface r(z) = r_bottom + slope (z + h/2), plus two caps."""
    radius_bottom, half_height = half[:, 0], half[:, 2]
    radius_top = taper * radius_bottom
    slope = (radius_top - radius_bottom) / (2 * half_height)
    ox, oy, oz = origin.T
    dx, dy, dz = direction.T
    # |xy(t)|^2 = (a + b t)^2 with r(z(t)) = a + b t
    a = radius_bottom + slope * (oz + half_height)
    b = slope * dz
    qa = dx * dx + dy * dy - b * b
    qb = 2 * (ox * dx + oy * dy - a * b)
    qc = ox * ox + oy * oy - a * a
    disc = qb * qb - 4 * qa * qc
    usable = (disc >= 0) & (np.abs(qa) > 1e-12)
    root = np.sqrt(np.where(usable, disc, 0.0))
    denominator = np.where(usable, 2 * qa, 1.0)
    side = np.stack([(-qb - root) / denominator, (-qb + root) / denominator], axis=1)  # (K, 2)
    side_z = oz[:, None] + side * dz[:, None]
    side_ok = usable[:, None] & (np.abs(side_z) <= half_height[:, None]) & (a[:, None] + b[:, None] * side >= 0)

    safe_dz = np.where(np.abs(dz) < 1e-12, 1e-12, dz)
    caps = np.stack([(half_height - oz) / safe_dz, (-half_height - oz) / safe_dz], axis=1)  # top, bottom
    cap_radius = np.stack([radius_top, radius_bottom], axis=1)
    cap_xy2 = (ox[:, None] + caps * dx[:, None]) ** 2 + (oy[:, None] + caps * dy[:, None]) ** 2
    cap_ok = cap_xy2 <= cap_radius**2

    candidates = np.concatenate([side, caps], axis=1)  # (K, 4)
    ok = np.concatenate([side_ok, cap_ok], axis=1) & (candidates > MIN_HIT_DISTANCE)
    candidates = np.where(ok, candidates, np.inf)
    which = candidates.argmin(axis=1)
    t = candidates[np.arange(len(which)), which]

    # side normal ~ (x/rho, y/rho, -slope); caps face straight up or down
    hit_x, hit_y = ox + np.where(np.isfinite(t), t, 0) * dx, oy + np.where(np.isfinite(t), t, 0) * dy
    rho = np.maximum(np.hypot(hit_x, hit_y), 1e-12)
    side_cos = np.abs(hit_x / rho * dx + hit_y / rho * dy - slope * dz) / np.sqrt(1 + slope * slope)
    cos = np.where(which < 2, side_cos, np.abs(dz))
    return t, cos


def _ellipsoid_hits(origin, direction, half, _taper):
    """Scale the ellipsoid to the unit sphere and solve the quadratic; keep the near root."""
    o, d = origin / half, direction / half
    qa = (d * d).sum(axis=1)
    qb = 2 * (o * d).sum(axis=1)
    qc = (o * o).sum(axis=1) - 1
    disc = qb * qb - 4 * qa * qc
    near = (-qb - np.sqrt(np.maximum(disc, 0.0))) / (2 * qa)
    hit = (disc >= 0) & (near > MIN_HIT_DISTANCE)
    normal = (origin + near[:, None] * direction) / half**2  # gradient of sum((p / half)^2)
    cos = np.abs((normal * direction).sum(axis=1)) / np.maximum(np.linalg.norm(normal, axis=1), 1e-12)
    return np.where(hit, near, np.inf), cos


_SOLVERS = {Kind.BOX: _box_hits, Kind.FRUSTUM: _frustum_hits, Kind.ELLIPSOID: _ellipsoid_hits}
