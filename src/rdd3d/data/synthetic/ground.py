"""A gently rolling ground surface and the ray search that finds where a beam meets it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Samples along a shallow ray's stretch inside the band of possible ground heights; refinement steps.
_MARCH_STEPS = 16
_REFINE_STEPS = 6
ASPHALT_REFLECTIVITY = 0.12


@dataclass(frozen=True)
class Ground:
    """Height field ``z = base_z + sum_k a_k (sin(w_k . xy + phi_k) - sin(phi_k))``.

    A few long sine waves make a smooth, low-frequency surface; subtracting ``sin(phi_k)``
    pins it to ``base_z`` under the sensor (the LiDAR frame's origin is the sensor, so
    ``base_z = -mounting height``). With no waves the ground is the flat plane ``z = base_z``.
    """

    base_z: float
    amplitude: np.ndarray  # (K,) metres
    wavevector: np.ndarray  # (K, 2) radians per metre
    phase: np.ndarray  # (K,)
    reflectivity: float = ASPHALT_REFLECTIVITY

    @classmethod
    def flat(cls, base_z: float) -> "Ground":
        return cls(base_z, np.zeros(0), np.zeros((0, 2)), np.zeros(0))

    @classmethod
    def sample(cls, rng: np.random.Generator, base_z: float, amplitude: float, wavelength: float,
               waves: int = 3) -> "Ground":
        """``waves`` sines in random directions, wavelengths around ``wavelength``, amplitudes summing to
        about ``amplitude`` (so the steepest slope is roughly ``2 pi amplitude / wavelength``)."""
        angle = rng.uniform(0, 2 * np.pi, waves)
        length = wavelength * rng.uniform(0.6, 1.6, waves)
        wavevector = np.stack([np.cos(angle), np.sin(angle)], axis=1) * (2 * np.pi / length)[:, None]
        weights = rng.dirichlet(np.ones(waves))
        return cls(base_z, amplitude * weights, wavevector, rng.uniform(0, 2 * np.pi, waves))

    @property
    def max_deviation(self) -> float:
        """No point of the surface lies further than this from ``base_z``."""
        return float(2 * np.abs(self.amplitude).sum())

    def height(self, xy: np.ndarray) -> np.ndarray:  # (..., 2) -> (...)
        angle = xy @ self.wavevector.T + self.phase  # (..., K)
        return self.base_z + (np.sin(angle) - np.sin(self.phase)) @ self.amplitude

    def gradient(self, xy: np.ndarray) -> np.ndarray:  # (..., 2) -> (..., 2)
        angle = xy @ self.wavevector.T + self.phase
        return (np.cos(angle) * self.amplitude) @ self.wavevector

    @property
    def max_slope(self) -> float:
        """No gradient of the surface is steeper than this."""
        return float((np.abs(self.amplitude) * np.linalg.norm(self.wavevector, axis=1)).sum())

    def intersect(
        self, origin: np.ndarray, directions: np.ndarray, max_range: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Distance along each ray (R, 3) to the ground and the cosine of the incidence angle.

        A ray can only meet the ground while inside the band ``base_z +- max_deviation``. A ray
        falling more steeply than the steepest slope sinks monotonically relative to the ground, so
        its stretch inside the band brackets the one crossing; a shallower ray samples that stretch
        at ``_MARCH_STEPS`` points to bracket the first crossing (a hill narrower than a step could
        be skipped; the surface is far smoother than that). False position then narrows the bracket
        (Illinois variant; the surface is nearly planar at the scale of a bracket). ``t`` is ``inf`` for rays that miss
        within ``max_range``.
        """
        t = np.full(len(directions), np.inf)
        cos = np.zeros(len(directions))
        down = np.flatnonzero(directions[:, 2] < -1e-9)
        d = directions[down]
        band = self.max_deviation
        enter = np.maximum((origin[2] - self.base_z - band) / -d[:, 2], 0.0)
        leave = np.minimum((origin[2] - self.base_z + band) / -d[:, 2], max_range)
        reachable = enter <= leave
        down, d, low, high = down[reachable], d[reachable], enter[reachable], leave[reachable]

        def above(s: np.ndarray, rays: np.ndarray | slice = slice(None)) -> np.ndarray:
            """Height over the ground of rays ``d[rays]`` at distances s (R', S) -> (R', S)."""
            ray = d[rays]
            return origin[2] + s * ray[:, 2:3] - self.height(origin[:2] + s[..., None] * ray[:, None, :2])

        shallow = np.flatnonzero(-d[:, 2] <= self.max_slope * np.hypot(d[:, 0], d[:, 1]))
        if shallow.size:
            samples = low[shallow, None] + (high - low)[shallow, None] * np.linspace(0, 1, _MARCH_STEPS)  # (R', S)
            first = np.argmax(above(samples, shallow) <= 0, axis=1)  # 0 when no sample is below
            rows = np.arange(len(shallow))
            low[shallow] = samples[rows, np.maximum(first - 1, 0)]
            high[shallow] = np.where(first > 0, samples[rows, first], samples[:, -1])
        low_above, high_above = above(low[:, None])[:, 0], above(high[:, None])[:, 0]
        crosses = high_above <= 0
        previous = np.zeros(len(low), np.int8)  # +1: high moved last step, -1: low moved
        for _ in range(_REFINE_STEPS):
            span = high_above - low_above
            guess = np.where(span < 0, high - high_above * (high - low) / np.where(span < 0, span, -1.0), high)
            guess_above = above(guess[:, None])[:, 0]
            is_below = guess_above <= 0
            # Illinois step: an end kept twice in a row has its value halved, so it cannot stall
            low_above = np.where(is_below & (previous == 1), low_above / 2, low_above)
            high_above = np.where(~is_below & (previous == -1), high_above / 2, high_above)
            high, high_above = np.where(is_below, guess, high), np.where(is_below, guess_above, high_above)
            low, low_above = np.where(is_below, low, guess), np.where(is_below, low_above, guess_above)
            previous = np.where(is_below, 1, -1).astype(np.int8)
        hit_t = guess

        point_xy = origin[:2] + hit_t[:, None] * d[:, :2]
        normal = np.concatenate([-self.gradient(point_xy), np.ones((len(hit_t), 1))], axis=1)
        hit_cos = np.abs((normal * d).sum(axis=1)) / np.linalg.norm(normal, axis=1)
        t[down[crosses]] = hit_t[crosses]
        cos[down[crosses]] = hit_cos[crosses]
        return t, cos
