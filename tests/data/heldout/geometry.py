"""Plane geometry: vectors, segments, polygons and a few classic algorithms."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

EPSILON = 1e-9


@dataclass(frozen=True)
class Vector:
    x: float
    y: float

    def __add__(self, other: Vector) -> Vector:
        return Vector(self.x + other.x, self.y + other.y)

    def __sub__(self, other: Vector) -> Vector:
        return Vector(self.x - other.x, self.y - other.y)

    def __mul__(self, k: float) -> Vector:
        return Vector(self.x * k, self.y * k)

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> Vector:
        return Vector(self.x / k, self.y / k)

    def __neg__(self) -> Vector:
        return Vector(-self.x, -self.y)

    def __iter__(self) -> Iterator[float]:
        yield self.x
        yield self.y

    def dot(self, other: Vector) -> float:
        return self.x * other.x + self.y * other.y

    def cross(self, other: Vector) -> float:
        return self.x * other.y - self.y * other.x

    def length(self) -> float:
        return math.hypot(self.x, self.y)

    def normalized(self) -> Vector:
        n = self.length()
        if n < EPSILON:
            raise ValueError("cannot normalize a zero vector")
        return self / n

    def rotated(self, angle: float) -> Vector:
        c, s = math.cos(angle), math.sin(angle)
        return Vector(self.x * c - self.y * s, self.x * s + self.y * c)

    def angle_to(self, other: Vector) -> float:
        return math.atan2(self.cross(other), self.dot(other))


def distance(a: Vector, b: Vector) -> float:
    return (a - b).length()


@dataclass(frozen=True)
class Segment:
    start: Vector
    end: Vector

    def length(self) -> float:
        return distance(self.start, self.end)

    def midpoint(self) -> Vector:
        return (self.start + self.end) / 2

    def direction(self) -> Vector:
        return self.end - self.start

    def closest_point(self, p: Vector) -> Vector:
        d = self.direction()
        denom = d.dot(d)
        if denom < EPSILON:
            return self.start
        t = max(0.0, min(1.0, (p - self.start).dot(d) / denom))
        return self.start + d * t

    def distance_to(self, p: Vector) -> float:
        return distance(p, self.closest_point(p))

    def intersection(self, other: Segment) -> Vector | None:
        r, s = self.direction(), other.direction()
        denom = r.cross(s)
        if abs(denom) < EPSILON:
            return None  # parallel or collinear
        q_p = other.start - self.start
        t = q_p.cross(s) / denom
        u = q_p.cross(r) / denom
        if 0 <= t <= 1 and 0 <= u <= 1:
            return self.start + r * t
        return None


def orientation(a: Vector, b: Vector, c: Vector) -> int:
    """1 for a counter-clockwise turn, -1 for clockwise, 0 when the points are collinear."""
    value = (b - a).cross(c - a)
    if abs(value) < EPSILON:
        return 0
    return 1 if value > 0 else -1


class Polygon:
    def __init__(self, points: Iterable[Vector]) -> None:
        self.points = list(points)
        if len(self.points) < 3:
            raise ValueError("a polygon needs at least three points")

    def __len__(self) -> int:
        return len(self.points)

    def edges(self) -> Iterator[Segment]:
        for i, p in enumerate(self.points):
            yield Segment(p, self.points[(i + 1) % len(self.points)])

    def perimeter(self) -> float:
        return sum(edge.length() for edge in self.edges())

    def signed_area(self) -> float:
        total = 0.0
        for edge in self.edges():
            total += edge.start.cross(edge.end)
        return total / 2

    def area(self) -> float:
        return abs(self.signed_area())

    def centroid(self) -> Vector:
        area = self.signed_area()
        if abs(area) < EPSILON:
            return sum(self.points, Vector(0, 0)) / len(self.points)
        cx = cy = 0.0
        for edge in self.edges():
            a, b = edge.start, edge.end
            f = a.cross(b)
            cx += (a.x + b.x) * f
            cy += (a.y + b.y) * f
        return Vector(cx / (6 * area), cy / (6 * area))

    def contains(self, p: Vector) -> bool:
        """Ray casting: count the edges a horizontal ray from `p` crosses."""
        inside = False
        for edge in self.edges():
            a, b = edge.start, edge.end
            if (a.y > p.y) != (b.y > p.y):
                x = a.x + (p.y - a.y) * (b.x - a.x) / (b.y - a.y)
                if x > p.x:
                    inside = not inside
        return inside

    def is_convex(self) -> bool:
        signs = set()
        n = len(self.points)
        for i in range(n):
            turn = orientation(self.points[i], self.points[(i + 1) % n], self.points[(i + 2) % n])
            if turn:
                signs.add(turn)
        return len(signs) <= 1


def convex_hull(points: Sequence[Vector]) -> list[Vector]:
    """Andrew's monotone chain, counter-clockwise, without collinear points."""
    pts = sorted(set(points), key=lambda v: (v.x, v.y))
    if len(pts) <= 2:
        return pts

    def half(seq: Iterable[Vector]) -> list[Vector]:
        chain: list[Vector] = []
        for p in seq:
            while len(chain) >= 2 and orientation(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain

    lower = half(pts)
    upper = half(reversed(pts))
    return lower[:-1] + upper[:-1]


def closest_pair(points: Sequence[Vector]) -> tuple[Vector, Vector]:
    if len(points) < 2:
        raise ValueError("need at least two points")
    pts = sorted(points, key=lambda v: v.x)
    best = (math.inf, pts[0], pts[1])
    for i, a in enumerate(pts):
        for b in pts[i + 1 :]:
            if b.x - a.x >= best[0]:
                break
            d = distance(a, b)
            if d < best[0]:
                best = (d, a, b)
    return best[1], best[2]


if __name__ == "__main__":
    square = Polygon([Vector(0, 0), Vector(2, 0), Vector(2, 2), Vector(0, 2)])
    print(square.area(), square.perimeter(), square.centroid())
    print(square.contains(Vector(1, 1)), square.contains(Vector(3, 1)))
    print(convex_hull([Vector(0, 0), Vector(1, 1), Vector(2, 0), Vector(1, 3), Vector(1, 0.5)]))
