"""Synthetic NYU-like indoor scenes rendered by ray casting (numpy, vectorised over pixels).

A scene is a room (floor, ceiling, four walls; 3-7.5 m wide and deep, 2.4-3.2 m high) holding
random boxes (furniture), vertical cylinders and spheres, with doors, windows and skirting
boards of real-world sizes on the walls (absolute-scale cues), every surface with a procedural
texture (checker, stripes or value noise, all in metres on the surface so that texture size
and foreshortening carry depth) and Lambertian shading from a point light with distance
falloff plus ambient light. The camera has NYU's Kinect intrinsics (fx 518.86, fy 519.47,
cx 325.58, cy 253.74 at 480x640, scaled for other sizes), stands 1.2-1.6 m high inside the
room and looks into it with a small downward pitch and roll, so depth is 0.5-10 m.

Rays are cast analytically: the room is the inside of an axis-aligned box (exit distance per
axis), a box is a slab test in its own yawed frame, a sphere and a cylinder a quadratic. Each
object is intersected only over the pixel rectangle its bounding sphere projects to. Rays are
parametrised with a unit forward (camera z) component, so the ray parameter ``t`` of the
first hit *is* the z-depth NYU stores.

With ``noise=True`` depth gets Kinect-like corruption: axial noise
``sigma(z) = 0.0012 + 0.0019 (z - 0.4)^2`` m, holes along depth discontinuities and at
grazing angles, random blob drop-outs, and 0 (invalid) beyond 10 m or nearer than 0.5 m.

Everything is deterministic in ``(seed, split, index)``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
from torch.utils.data import Dataset

from ._common import NYU_SIZE, make_item, parse_size

#: NYU-Depth-v2 Kinect colour intrinsics at 480x640: fx, fy, cx, cy (pixels)
KINECT_INTRINSICS = (518.86, 519.47, 325.58, 253.74)
MIN_DEPTH, MAX_DEPTH = 0.5, 10.0
_SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}

# surface ids of the room
FLOOR, CEILING, WALL_X0, WALL_X1, WALL_Z0, WALL_Z1 = range(6)


def intrinsics(size) -> tuple[float, float, float, float]:
    """Kinect intrinsics scaled to ``size`` = (H, W) (pixel centres kept aligned)."""
    h, w = parse_size(size)
    fx, fy, cx, cy = KINECT_INTRINSICS
    sx, sy = w / 640.0, h / 480.0
    return fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5


_RAY_CACHE: dict = {}


def _camera_rays(size):
    """Per-pixel camera-frame ray directions (x right, y down, z = 1), float32 (H, W) each."""
    size = parse_size(size)
    if size not in _RAY_CACHE:
        h, w = size
        fx, fy, cx, cy = intrinsics(size)
        u = (np.arange(w, dtype=np.float32) - np.float32(cx)) / np.float32(fx)
        v = (np.arange(h, dtype=np.float32) - np.float32(cy)) / np.float32(fy)
        _RAY_CACHE[size] = (np.broadcast_to(u[None, :], (h, w)), np.broadcast_to(v[:, None], (h, w)))
    return _RAY_CACHE[size]


# ----------------------------------------------------------------------------- scene description


@dataclass
class Material:
    """Albedo = mix(color_a, color_b, pattern(u, v)) with u, v surface coordinates in metres."""

    kind: str  # "plain", "checker", "stripes", "noise"
    color_a: np.ndarray
    color_b: np.ndarray
    scale: float  # pattern period in metres
    angle: float = 0.0  # stripes direction
    grid: np.ndarray | None = None  # value-noise lattice


@dataclass
class Primitive:
    kind: str  # "box", "sphere", "cylinder"
    center: np.ndarray  # world (x, y, z)
    size: np.ndarray  # box: half extents (x, y, z); sphere: (r,); cylinder: (r, half height)
    yaw: float
    material: Material

    @property
    def radius(self) -> float:
        """Bounding sphere radius."""
        if self.kind == "box":
            return float(np.linalg.norm(self.size))
        if self.kind == "sphere":
            return float(self.size[0])
        return float(math.hypot(self.size[0], self.size[1]))


@dataclass
class Scene:
    room: np.ndarray  # (W, H, D) metres
    room_materials: list
    objects: list
    light: np.ndarray  # point light position
    light_power: float
    ambient: float
    tint: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))
    #: per wall id: [(u0, u1, v0, v1, rgb)] rectangles (doors, windows) in wall coordinates, metres
    decor: dict = field(default_factory=dict)
    #: skirting board height (metres) and colour along the bottom of every wall
    skirting: tuple = (0.0, np.zeros(3, np.float32))


def _rand_color(rng, lo=0.15, hi=0.9, sat=0.35) -> np.ndarray:
    base = rng.uniform(lo, hi)
    hue = rng.uniform(-sat, sat, size=3) * base
    return np.clip(base + hue, 0.02, 1.0).astype(np.float32)


def _material(rng, kinds=("plain", "checker", "stripes", "noise"), p=None, lo=0.15, hi=0.9) -> Material:
    kind = str(rng.choice(kinds, p=p))
    a = _rand_color(rng, lo, hi)
    b = np.clip(a * rng.uniform(0.4, 0.8) + rng.uniform(-0.05, 0.05, 3), 0.02, 1.0).astype(np.float32)
    scale = float(rng.uniform(0.1, 0.6))
    grid = rng.random((32, 32), dtype=np.float32) if kind == "noise" else None
    return Material(kind, a, b, scale, float(rng.uniform(0, math.pi)), grid)


def sample_scene(rng: np.random.Generator) -> Scene:
    """A random room with 3-9 objects resting on the floor (some stacked on boxes)."""
    W, D = rng.uniform(3.0, 7.5, size=2)
    H = rng.uniform(2.4, 3.2)
    floor = _material(rng, ("checker", "stripes", "noise"), lo=0.2, hi=0.7)
    wall = _material(rng, ("plain", "noise", "stripes"), p=(0.4, 0.4, 0.2), lo=0.5, hi=0.95)
    walls = [wall if rng.random() < 0.7 else _material(rng, ("plain", "noise"), lo=0.45, hi=0.95) for _ in range(4)]
    ceiling = Material("plain", np.full(3, rng.uniform(0.8, 0.95), np.float32), np.zeros(3, np.float32), 1.0)
    room_materials = [floor, ceiling] + walls
    objects: list[Primitive] = []
    n = int(rng.integers(3, 10))
    for _ in range(n):
        kind = str(rng.choice(["box", "cylinder", "sphere"], p=[0.6, 0.22, 0.18]))
        mat = _material(rng, lo=0.1, hi=0.9)
        if kind == "box":
            half = np.array([rng.uniform(0.15, 0.9), rng.uniform(0.15, 0.8), rng.uniform(0.15, 0.6)], np.float32)
            yaw = float(rng.choice([0.0, math.pi / 2]) + rng.normal(0, 0.05)) if rng.random() < 0.7 else float(rng.uniform(0, math.pi))
            r_xy = float(math.hypot(half[0], half[2]))
            if rng.random() < 0.5:  # against a wall, like most furniture
                side = int(rng.integers(4))
                if side < 2:
                    x = half[2] + 0.02 if side == 0 else W - half[2] - 0.02
                    z = rng.uniform(r_xy, max(r_xy + 1e-3, D - r_xy))
                    yaw = math.pi / 2 + float(rng.normal(0, 0.03))
                else:
                    x = rng.uniform(r_xy, max(r_xy + 1e-3, W - r_xy))
                    z = half[2] + 0.02 if side == 2 else D - half[2] - 0.02
                    yaw = float(rng.normal(0, 0.03))
            else:
                x, z = rng.uniform(r_xy, W - r_xy), rng.uniform(r_xy, D - r_xy)
            center = np.array([x, half[1], z], np.float32)
            objects.append(Primitive("box", center, half, yaw, mat))
            if rng.random() < 0.35:  # something on top of it
                top = center[1] + half[1]
                if rng.random() < 0.5:
                    r = float(rng.uniform(0.06, min(0.25, half[0], half[2])))
                    objects.append(Primitive("sphere", np.array([x, top + r, z], np.float32), np.array([r], np.float32), 0.0, _material(rng)))
                else:
                    r = float(rng.uniform(0.05, min(0.2, half[0], half[2])))
                    hh = float(rng.uniform(0.05, 0.25))
                    objects.append(Primitive("cylinder", np.array([x, top + hh, z], np.float32), np.array([r, hh], np.float32), 0.0, _material(rng)))
        elif kind == "cylinder":
            r, hh = float(rng.uniform(0.08, 0.4)), float(rng.uniform(0.15, 0.9))
            x, z = rng.uniform(r + 0.05, W - r - 0.05), rng.uniform(r + 0.05, D - r - 0.05)
            objects.append(Primitive("cylinder", np.array([x, hh, z], np.float32), np.array([r, hh], np.float32), 0.0, mat))
        else:
            r = float(rng.uniform(0.1, 0.45))
            x, z = rng.uniform(r + 0.05, W - r - 0.05), rng.uniform(r + 0.05, D - r - 0.05)
            objects.append(Primitive("sphere", np.array([x, r, z], np.float32), np.array([r], np.float32), 0.0, mat))
    # fixed-size fittings give absolute scale, as in real rooms: doors (0.8-0.95 x 2.0-2.1 m),
    # windows (sill 0.8-1.0 m), a 6-12 cm skirting board
    decor: dict = {}
    for wall_id, length in ((WALL_X0, D), (WALL_X1, D), (WALL_Z0, W), (WALL_Z1, W)):
        items = []
        if rng.random() < 0.35 and length > 1.5:
            dw = rng.uniform(0.8, 0.95)
            u0 = rng.uniform(0.1, length - dw - 0.1)
            items.append((u0, u0 + dw, 0.0, rng.uniform(2.0, 2.1), _rand_color(rng, 0.3, 0.9, 0.2)))
        if rng.random() < 0.4 and length > 2.0:
            ww = rng.uniform(0.8, min(1.6, length - 0.4))
            u0 = rng.uniform(0.2, length - ww - 0.2)
            if not any(u0 < b + 0.1 and u0 + ww > a - 0.1 for a, b, *_ in items):
                glass = np.clip(np.array([0.8, 0.88, 0.95]) + rng.uniform(-0.05, 0.05, 3), 0, 1).astype(np.float32)
                items.append((u0, u0 + ww, rng.uniform(0.8, 1.0), min(H - 0.2, rng.uniform(1.9, 2.2)), glass))
        if items:
            decor[wall_id] = items
    skirting = (float(rng.uniform(0.06, 0.12)) if rng.random() < 0.8 else 0.0, _rand_color(rng, 0.1, 0.95, 0.1))
    light = np.array([rng.uniform(0.2, 0.8) * W, H - 0.15, rng.uniform(0.2, 0.8) * D], np.float32)
    return Scene(
        room=np.array([W, H, D], np.float32),
        room_materials=room_materials,
        objects=objects,
        light=light,
        light_power=float(rng.uniform(3.0, 7.0)),
        ambient=float(rng.uniform(0.15, 0.35)),
        tint=np.clip(1 + rng.normal(0, 0.05, 3), 0.85, 1.15).astype(np.float32),
        decor=decor,
        skirting=skirting,
    )


def sample_camera(rng: np.random.Generator, scene: Scene):
    """Camera centre and rotation (columns: right, down, forward in world coordinates).

    The camera stands 0.5 m or more from walls and objects and looks roughly at the room's
    centre (yaw +-30 degrees), pitched 0-25 degrees down, rolled up to 3 degrees."""
    W, H, D = (float(v) for v in scene.room)
    for _ in range(100):
        pos = np.array([rng.uniform(0.5, W - 0.5), rng.uniform(1.2, 1.6), rng.uniform(0.5, D - 0.5)], np.float32)
        ok = True
        for obj in scene.objects:
            horiz = float(np.hypot(*(pos[[0, 2]] - obj.center[[0, 2]])))
            # horizontal reach of the object from its axis
            reach = float(math.hypot(obj.size[0], obj.size[2])) if obj.kind == "box" else float(obj.size[0])
            if horiz < reach + 0.6:
                ok = False
                break
        if ok:
            break
    to_center = np.array([W / 2 - pos[0], D / 2 - pos[2]])
    base_yaw = math.atan2(to_center[0], to_center[1]) if np.linalg.norm(to_center) > 0.3 else rng.uniform(-math.pi, math.pi)
    yaw = base_yaw + rng.uniform(-0.5, 0.5)
    pitch = -rng.uniform(0.0, 0.44)
    roll = rng.uniform(-0.05, 0.05)
    # forward in world (y up): yaw about y, pitch about the camera's right axis
    fwd = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    right = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
    down = np.cross(fwd, right)  # completes a right-handed (right, down, forward) frame
    if down[1] > 0:
        down = -down
    c, s = math.cos(roll), math.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    return pos, np.stack([right, down, fwd], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------- ray casting


def _project_rect(center, radius, cam_pos, R, size):
    """Pixel rectangle (r0, r1, c0, c1) covering a bounding sphere, or the whole image."""
    h, w = size
    fx, fy, cx, cy = intrinsics(size)
    p = R.T @ (center - cam_pos)
    if p[2] - radius < 0.05:
        return 0, h, 0, w
    corners = p[None, :] + radius * np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    u = fx * corners[:, 0] / corners[:, 2] + cx
    v = fy * corners[:, 1] / corners[:, 2] + cy
    c0, c1 = int(max(0, math.floor(u.min()))), int(min(w, math.ceil(u.max()) + 1))
    r0, r1 = int(max(0, math.floor(v.min()))), int(min(h, math.ceil(v.max()) + 1))
    return r0, r1, c0, c1


def _hit_box(o, dx, dy, dz, obj):
    c, s = math.cos(obj.yaw), math.sin(obj.yaw)
    # into the box frame: rotate by -yaw about y
    rel = o - obj.center
    ox, oy, oz = c * rel[0] - s * rel[2], rel[1], s * rel[0] + c * rel[2]
    lx = c * dx - s * dz
    lz = s * dx + c * dz
    tmin = tmax = None
    with np.errstate(divide="ignore", invalid="ignore"):
        for oo, dd, e in ((ox, lx, obj.size[0]), (oy, dy, obj.size[1]), (oz, lz, obj.size[2])):
            inv = np.float32(1.0) / dd
            t1 = (np.float32(-e - oo)) * inv
            t2 = (np.float32(e - oo)) * inv
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            tmin = lo if tmin is None else np.maximum(tmin, lo)
            tmax = hi if tmax is None else np.minimum(tmax, hi)
    hit = (tmax >= tmin) & (tmin > 0)
    return np.where(hit, tmin, np.float32(np.inf))


def _hit_sphere(o, dx, dy, dz, obj):
    oc = (o - obj.center).astype(np.float32)
    a = dx * dx + dy * dy + dz * dz
    b = dx * oc[0] + dy * oc[1] + dz * oc[2]
    cc = np.float32(oc @ oc - obj.size[0] ** 2)
    disc = b * b - a * cc
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    return np.where((disc >= 0) & (t > 0), t, np.float32(np.inf))


def _hit_cylinder(o, dx, dy, dz, obj):
    r, hh = float(obj.size[0]), float(obj.size[1])
    ocx, ocz = float(o[0] - obj.center[0]), float(o[2] - obj.center[2])
    y0, y1 = float(obj.center[1] - hh), float(obj.center[1] + hh)
    a = dx * dx + dz * dz
    b = dx * ocx + dz * ocz
    cc = np.float32(ocx * ocx + ocz * ocz - r * r)
    disc = b * b - a * cc
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / a
        y = o[1] + t * dy
        side = np.where((disc >= 0) & (t > 0) & (y >= y0) & (y <= y1), t, np.float32(np.inf))
        cap_y = y1 if o[1] > y1 else y0
        tc = np.float32(cap_y - o[1]) / dy
        px = ocx + tc * dx
        pz = ocz + tc * dz
        cap = np.where((tc > 0) & (px * px + pz * pz <= r * r), tc, np.float32(np.inf))
    return np.minimum(side, cap)


_HIT = {"box": _hit_box, "sphere": _hit_sphere, "cylinder": _hit_cylinder}


def _cells(x):
    """floor(x) as int32 for |x| < 2^20 (truncation after a positive offset: faster than np.floor)."""
    return (x + np.float32(1 << 20)).astype(np.int32) - (1 << 20)


def _pattern(mat: Material, u, v):
    """Pattern value in [0, 1] at surface coordinates (u, v) metres (1-D float32 arrays), or None."""
    if mat.kind == "plain":
        return None
    inv = np.float32(1.0 / mat.scale)
    if mat.kind == "checker":
        return ((_cells(u * inv) + _cells(v * inv)) & 1).astype(np.float32)
    if mat.kind == "stripes":
        w = np.float32(2 * math.cos(mat.angle)) * u + np.float32(2 * math.sin(mat.angle)) * v
        return (_cells(w * inv) & 1).astype(np.float32)
    # value noise: bilinear interpolation of a periodic random lattice (size a power of 2)
    g = mat.grid.ravel()
    n = mat.grid.shape[0]
    x, y = u * inv, v * inv
    xi, yi = _cells(x), _cells(y)
    fx, fy = x - xi, y - yi
    i0, j0 = xi & (n - 1), (yi & (n - 1)) * n
    i1, j1 = (i0 + 1) & (n - 1), ((yi + 1) & (n - 1)) * n
    top = g[j0 + i0] + fx * (g[j0 + i1] - g[j0 + i0])
    bot = g[j1 + i0] + fx * (g[j1 + i1] - g[j1 + i0])
    return top + fy * (bot - top)


def render(scene: Scene, cam_pos, R, size=NYU_SIZE, rng: np.random.Generator | None = None, with_cos: bool = False):
    """Render ``scene`` from a camera: (rgb uint8 (3, H, W), z-depth float32 (H, W), cos_view).

    ``R``'s columns are the camera's right, down and forward axes in world coordinates.
    ``rng`` adds per-pixel sensor noise to the image (None: none). ``cos_view`` (H, W) is
    ``|n . d| / |d|`` (the cosine between surface normal and view ray) if ``with_cos``, else None."""
    size = parse_size(size)
    h, w = size
    cu, cv = _camera_rays(size)
    # world ray directions d = right * u + down * v + forward (forward component 1 -> t is z-depth)
    dx = R[0, 0] * cu + R[0, 1] * cv + R[0, 2]
    dy = R[1, 0] * cu + R[1, 1] * cv + R[1, 2]
    dz = R[2, 0] * cu + R[2, 1] * cv + R[2, 2]
    o = np.asarray(cam_pos, np.float32)
    W, Hr, D = (float(v) for v in scene.room)
    with np.errstate(divide="ignore"):
        tx = np.where(dx >= 0, np.float32(W - o[0]) / dx, np.float32(-o[0]) / dx)
        ty = np.where(dy >= 0, np.float32(Hr - o[1]) / dy, np.float32(-o[1]) / dy)
        tz = np.where(dz >= 0, np.float32(D - o[2]) / dz, np.float32(-o[2]) / dz)
    zbuf = np.minimum(np.minimum(tx, ty), tz)
    ids = np.where(ty <= np.minimum(tx, tz), np.where(dy >= 0, CEILING, FLOOR),
                   np.where(tx <= tz, np.where(dx >= 0, WALL_X1, WALL_X0), np.where(dz >= 0, WALL_Z1, WALL_Z0))).astype(np.int16)
    rects = []
    for k, obj in enumerate(scene.objects):
        r0, r1, c0, c1 = _project_rect(obj.center, obj.radius, o, R, size)
        rects.append((r0, r1, c0, c1))
        if r1 <= r0 or c1 <= c0:
            continue
        sl = (slice(r0, r1), slice(c0, c1))
        t = _HIT[obj.kind](o, dx[sl], dy[sl], dz[sl], obj)
        closer = t < zbuf[sl]
        zbuf[sl] = np.where(closer, t, zbuf[sl])
        ids[sl][closer] = 6 + k

    # Per surface (pixels grouped by id): hit point, normal, textured albedo, Lambertian shading
    # from the point light with 1 / (4 + d^2) falloff plus ambient.
    room_normals = {FLOOR: (0, 1, 0), CEILING: (0, -1, 0), WALL_X0: (1, 0, 0), WALL_X1: (-1, 0, 0),
                    WALL_Z0: (0, 0, 1), WALL_Z1: (0, 0, -1)}
    flat_ids = ids.ravel()
    order = np.argsort(flat_ids, kind="stable")
    bounds = np.searchsorted(flat_ids[order], np.arange(6 + len(scene.objects) + 1))
    zf, dxf, dyf, dzf = zbuf.ravel(), dx.ravel(), dy.ravel(), dz.ravel()
    out = np.empty((3, h * w), np.float32)
    cos_view = np.empty(h * w, np.float32) if with_cos else None
    gain = (0.9 * scene.tint).astype(np.float32)
    L = scene.light
    for sid in range(6 + len(scene.objects)):
        idx = order[bounds[sid]:bounds[sid + 1]]
        if idx.size == 0:
            continue
        t, ddx, ddy, ddz = zf[idx], dxf[idx], dyf[idx], dzf[idx]
        X, Y, Z = o[0] + t * ddx, o[1] + t * ddy, o[2] + t * ddz
        if sid < 6:
            mat = scene.room_materials[sid]
            u, v = ((X, Z) if sid in (FLOOR, CEILING) else (Z, Y) if sid in (WALL_X0, WALL_X1) else (X, Y))
            nx, ny, nz = room_normals[sid]
        else:
            obj = scene.objects[sid - 6]
            mat = obj.material
            rx, ry, rz = X - obj.center[0], Y - obj.center[1], Z - obj.center[2]
            if obj.kind == "box":
                c, s = math.cos(obj.yaw), math.sin(obj.yaw)
                lx, lz = c * rx - s * rz, s * rx + c * rz
                ax = np.abs(lx) * np.float32(1 / obj.size[0])
                ay = np.abs(ry) * np.float32(1 / obj.size[1])
                az = np.abs(lz) * np.float32(1 / obj.size[2])
                on_x = (ax >= ay) & (ax >= az)
                on_y = ~on_x & (ay >= az)
                on_z = ~on_x & ~on_y
                nlx = np.where(on_x, np.sign(lx), np.float32(0))
                nly = np.where(on_y, np.sign(ry), np.float32(0))
                nlz = np.where(on_z, np.sign(lz), np.float32(0))
                # back to world: rotate by +yaw about y
                nx, ny, nz = c * nlx + s * nlz, nly, -s * nlx + c * nlz
                u = np.where(on_x, lz, lx)
                v = np.where(on_y, lz, ry)
            elif obj.kind == "sphere":
                inv_r = np.float32(1 / obj.size[0])
                nx, ny, nz = rx * inv_r, ry * inv_r, rz * inv_r
                u = np.arctan2(rx, rz) * np.float32(obj.size[0])
                v = ry
            else:
                r = np.float32(obj.size[0])
                on_cap = np.abs(np.abs(ry) - obj.size[1]) < 1e-3
                nx = np.where(on_cap, np.float32(0), rx / r)
                ny = np.where(on_cap, np.sign(ry), np.float32(0))
                nz = np.where(on_cap, np.float32(0), rz / r)
                u = np.where(on_cap, rx, np.arctan2(rx, rz) * r)
                v = np.where(on_cap, rz, ry)
        lx_, ly_, lz_ = L[0] - X, L[1] - Y, L[2] - Z
        d2 = lx_ * lx_ + ly_ * ly_ + lz_ * lz_
        ndotl = np.maximum((nx * lx_ + ny * ly_ + nz * lz_) / np.sqrt(d2), np.float32(0))
        shade = np.float32(scene.ambient) + np.float32(scene.light_power) * ndotl / (np.float32(4.0) + d2)
        pat = _pattern(mat, u, v)
        albedo = [np.float32(mat.color_a[ch]) if pat is None
                  else mat.color_a[ch] + pat * np.float32(mat.color_b[ch] - mat.color_a[ch]) for ch in range(3)]
        if WALL_X0 <= sid <= WALL_Z1:
            rects = list(scene.decor.get(sid, ()))
            if scene.skirting[0] > 0:
                rects.append((-np.inf, np.inf, -np.inf, scene.skirting[0], scene.skirting[1]))
            for u0, u1, v0, v1, color in rects:
                inside = (v <= v1) & (v >= v0) & (u >= u0) & (u <= u1)
                if inside.any():
                    albedo = [np.full(idx.size, a, np.float32) if np.ndim(a) == 0 else a for a in albedo]
                    for ch in range(3):
                        albedo[ch][inside] = color[ch]
        for ch in range(3):
            out[ch, idx] = albedo[ch] * (shade * gain[ch])
        if with_cos:
            dn = np.sqrt(ddx * ddx + ddy * ddy + ddz * ddz)
            cos_view[idx] = np.abs(nx * ddx + ny * ddy + nz * ddz) / dn
    img = out.reshape(3, h, w)
    if rng is not None:
        img += rng.standard_normal((1, h, w), dtype=np.float32) * np.float32(0.01)
    np.clip(img, 0, 1, out=img)
    rgb = (np.sqrt(img) * np.float32(255) + np.float32(0.5)).astype(np.uint8)
    depth = np.clip(zbuf, MIN_DEPTH, MAX_DEPTH).astype(np.float32)
    if with_cos:
        cos_view = cos_view.reshape(h, w)
    return np.ascontiguousarray(rgb), depth, cos_view


def kinect_noise(depth: np.ndarray, cos_view: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Raw-Kinect-like depth: axial noise, holes at discontinuities / grazing angles / random blobs, 0 = invalid."""
    h, w = depth.shape
    z = depth + rng.standard_normal((h, w), dtype=np.float32) * (0.0012 + 0.0019 * (depth - 0.4) ** 2)
    holes = cos_view < 0.12
    # discontinuities: a jump of more than 5% to the right or below neighbour, widened to the left
    jump = np.zeros((h, w), bool)
    jump[:, 1:] |= np.abs(depth[:, 1:] - depth[:, :-1]) > 0.05 * depth[:, 1:]
    jump[1:, :] |= np.abs(depth[1:, :] - depth[:-1, :]) > 0.05 * depth[1:, :]
    widen = jump.copy()
    for k in (1, 2, 3):
        widen[:, :-k] |= jump[:, k:]
    holes |= widen & (rng.random((h, w), dtype=np.float32) < 0.8)
    # random blob drop-outs (dark or specular patches on real sensors)
    gh, gw = max(2, h // 12), max(2, w // 12)
    blobs = rng.random((gh, gw), dtype=np.float32) > 0.985
    holes |= np.repeat(np.repeat(blobs, -(-h // gh), 0), -(-w // gw), 1)[:h, :w]
    z[holes | (z < MIN_DEPTH) | (z > MAX_DEPTH)] = 0
    return z.astype(np.float32)


# ----------------------------------------------------------------------------- frames and datasets


def _rng(seed: int, split: str, *index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), _SPLIT_STREAMS[split], *index])))


def render_frame(seed: int, index: int, split: str = "train", size=NYU_SIZE, frames_per_scene: int = 4,
                 noise: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame ``index`` of a synthetic split: (rgb uint8 (3, H, W), depth float32 (H, W), raw depth float32 (H, W)).

    Frames ``k * frames_per_scene ... (k + 1) * frames_per_scene - 1`` are views of scene ``k``.
    ``depth`` is clean (0.5-10 m, no holes; like NYU's in-painted ``depths``); ``raw`` has
    Kinect-like noise and holes when ``noise=True`` and equals ``depth`` otherwise."""
    if split not in _SPLIT_STREAMS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_STREAMS)}, got {split!r}")
    scene_id, view = divmod(int(index), int(frames_per_scene))
    scene = sample_scene(_rng(seed, split, scene_id))
    view_rng = _rng(seed, split, scene_id, view + 1)
    cam_pos, R = sample_camera(view_rng, scene)
    rgb, depth, cos_view = render(scene, cam_pos, R, size, view_rng, with_cos=noise)
    raw = kinect_noise(depth, cos_view, view_rng) if noise else depth
    return rgb, depth, raw


class SyntheticScenes(Dataset):
    """``n`` synthetic NYU-like frames rendered on the fly (nothing stored), deterministic by seed.

    Args:
        n: number of frames.
        seed: the generator seed.
        size: (H, W) frame size; intrinsics scale with it.
        split: ``"train"``, ``"val"`` or ``"test"``: independent scene streams, so splits
            share no scene.
        frames_per_scene: consecutive frames that view the same room (``scenes[i]`` names it).
        noise: Kinect-like noise and holes in the depth.

    Items are ``{"image": uint8 (3, H, W), "depth": float32 (1, H, W) metres, 0 = invalid}``.
    """

    def __init__(self, n: int, seed: int = 0, size=NYU_SIZE, split: str = "train", frames_per_scene: int = 4,
                 noise: bool = False):
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if split not in _SPLIT_STREAMS:
            raise ValueError(f"split must be one of {sorted(_SPLIT_STREAMS)}, got {split!r}")
        if frames_per_scene < 1:
            raise ValueError(f"frames_per_scene must be >= 1, got {frames_per_scene}")
        self.n, self.seed, self.size, self.split = int(n), int(seed), parse_size(size), split
        self.frames_per_scene, self.noise = int(frames_per_scene), bool(noise)
        self.scenes = [f"synth_{split}_{i // self.frames_per_scene:05d}" for i in range(self.n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} frames")
        rgb, _, raw = render_frame(self.seed, i, self.split, self.size, self.frames_per_scene, self.noise)
        return make_item(rgb, raw)

    def __repr__(self) -> str:
        return f"SyntheticScenes(n={self.n}, seed={self.seed}, size={self.size}, split={self.split!r})"


# ----------------------------------------------------------------------------- files on disk


#: what ``write_synthetic_dataset`` puts in its folder (``overwrite`` replaces only such a folder)
DATASET_ENTRIES = ("train", "val", "nyu_depth_v2_labeled.mat", "test_indices.txt", "synth.json")


def write_synthetic_dataset(
    out_dir,
    train: int = 1000,
    val: int = 100,
    seed: int = 0,
    layout: str = "frames",
    size=NYU_SIZE,
    frames_per_scene: int = 4,
    noise: bool = False,
    progress: bool = False,
    val_frames_per_scene: int = 1,
    overwrite: bool = False,
) -> str:
    """Render a synthetic dataset into the folder ``out_dir`` in a real NYU layout; returns ``out_dir``.

    ``out_dir`` must be absent or empty: a folder that already holds files is refused
    (FileExistsError), since adding frames of another size or seed to a dataset would mix them.
    ``overwrite=True`` replaces a dataset this function wrote (a folder holding only
    :data:`DATASET_ENTRIES`); anything else in the folder is still refused. The dataset is
    rendered in a temporary folder beside ``out_dir`` and renamed into place, so an interrupted
    or failed run leaves ``out_dir`` as it was (the replaced dataset included).
    ``synth.json`` records what was rendered (seed, size, counts, layout, views, noise).

    ``layout="frames"``: ``train/synth_NNNNN/NNNNN.h5`` (``frames_per_scene`` views per scene) and
    ``val/official/NNNNN.h5``, read by :class:`NYUFrames`; train depth is the raw depth (with
    holes when ``noise``), val depth is clean, as in the real layout. ``layout="labeled"``: ``nyu_depth_v2_labeled.mat`` with the ``train``
    images first and the ``val`` ones last (``depths`` clean, ``rawDepths`` noisy if ``noise``)
    and ``test_indices.txt`` (1-based indices of the val images), read by
    ``NYULabeled(out_dir, split=...)`` (which reads the ``test_indices.txt`` beside the file) and
    ``fastmde train --data-format labeled --data <out_dir>``.
    Validation scenes come from a separate stream, so they share no scene with training, and
    by default every validation frame is a room of its own (``val_frames_per_scene=1``): the
    frames of a held-out score are independent samples, not views of a few rooms.
    """
    import json
    import secrets
    import shutil

    from .._atomic import _temporary_name, atomic_write_text

    if layout not in ("frames", "labeled"):
        raise ValueError(f"layout must be 'frames' or 'labeled', got {layout!r}")
    # both splits: the readers and fastmde train read train/ and val/ (a split with no frame is not a split)
    if train < 1 or val < 1:
        raise ValueError(f"train and val must be positive numbers of frames (both splits are written), got "
                         f"train={train}, val={val}")
    if frames_per_scene < 1 or val_frames_per_scene < 1:
        raise ValueError(f"frames per scene must be >= 1, got {frames_per_scene} (train) and "
                         f"{val_frames_per_scene} (val)")
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be an integer in 0..2**63-1, got {seed}")
    size = parse_size(size)
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir!r} is a file; the dataset is written into a folder")
    held = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    if held and not overwrite:
        raise FileExistsError(f"{out_dir!r} already holds {', '.join(held[:5])}{' ...' if len(held) > 5 else ''}: "
                              "writing into it would mix two datasets; choose an empty or new folder, or pass "
                              "--overwrite to replace a dataset written by fastmde synth")
    foreign = [name for name in held if name not in DATASET_ENTRIES]
    if foreign:
        raise FileExistsError(f"{out_dir!r} holds files fastmde synth does not write ({', '.join(foreign[:5])}): "
                              "--overwrite replaces only a synthetic dataset; choose another folder")
    manifest = {"generator": "fastmde synth", "layout": layout, "train": int(train), "val": int(val),
                "seed": int(seed), "size": list(size), "frames_per_scene": int(frames_per_scene),
                "val_frames_per_scene": int(val_frames_per_scene), "noise": bool(noise)}
    # Rendered beside, then renamed into place; a replaced dataset is moved aside only once the
    # new one is complete, and comes back if anything fails.
    target = os.path.abspath(out_dir)
    parent, base = os.path.dirname(target), os.path.basename(target)
    os.makedirs(parent, exist_ok=True)
    staging = _temporary_name(target)   # fastmde._atomic's temporary names, and only there
    os.mkdir(staging)
    aside = None
    try:
        _write_dataset(staging, train, val, seed, layout, size, frames_per_scene, noise, progress, val_frames_per_scene)
        atomic_write_text(json.dumps(manifest, indent=2) + "\n", os.path.join(staging, "synth.json"))
        if held:
            aside = os.path.join(parent, f".{base}.{secrets.token_hex(6)}.old")
            os.rename(target, aside)
        if os.path.isdir(target):    # an empty folder of the user's: keep it, fill it (synth.json last)
            for name in sorted(os.listdir(staging), key=lambda n: n == "synth.json"):
                os.rename(os.path.join(staging, name), os.path.join(target, name))
            os.rmdir(staging)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if aside is not None and not os.path.exists(target):
            os.rename(aside, target)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return out_dir


def _write_dataset(out_dir: str, train: int, val: int, seed: int, layout: str, size, frames_per_scene: int,
                   noise: bool, progress: bool, val_frames_per_scene: int) -> None:
    """The frames of :func:`write_synthetic_dataset`, written into the existing folder ``out_dir``."""
    from .writers import LabeledMatWriter, write_frame_h5, write_index_file

    jobs = [("train", i) for i in range(train)] + [("val", i) for i in range(val)]

    def frames():
        for k, (split, i) in enumerate(jobs):
            if progress and (k % 100 == 0 or k == len(jobs) - 1):
                print(f"synth: {k + 1}/{len(jobs)} frames", flush=True)
            views = frames_per_scene if split == "train" else val_frames_per_scene
            yield split, i, render_frame(seed, i, split, size, views, noise)

    if layout == "frames":
        for split, i, (rgb, depth, raw) in frames():
            if split == "train":
                path = os.path.join(out_dir, "train", f"synth_{i // frames_per_scene:05d}", f"{i:05d}.h5")
                write_frame_h5(path, rgb, raw)
            else:  # like the real val/official files (from the labelled set's in-painted depths)
                write_frame_h5(os.path.join(out_dir, "val", "official", f"{i:05d}.h5"), rgb, depth)
    else:
        with LabeledMatWriter(os.path.join(out_dir, "nyu_depth_v2_labeled.mat"), train + val, size) as w:
            for _, _, (rgb, depth, raw) in frames():
                w.add(rgb, depth, raw)
        write_index_file(os.path.join(out_dir, "test_indices.txt"), range(train + 1, train + val + 1),
                         "1-based indices of the held-out (val) images of nyu_depth_v2_labeled.mat")


def default_cache_dir() -> str:
    """``$FASTMDE_CACHE`` or ``~/.cache/fastmde``."""
    return os.environ.get("FASTMDE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fastmde")


def default_synthetic_root(cache_dir=None, train: int = 1000, val: int = 100, seed: int = 0,
                           size=NYU_SIZE, progress: bool = True, views: int = 4) -> str:
    """The built-in dataset: a synthetic per-frame HDF5 tree, rendered once and cached.

    ``train`` frames, ``views`` of each training room, and ``val`` held-out frames, each of its
    own room. Lives at ``<cache_dir>/synthetic-v2-<H>x<W>-train<N>-views<V>-val<M>-seed<S>``
    (``cache_dir`` defaults to :func:`default_cache_dir`); read it with
    ``NYUFrames(root, "train" | "val", size=size)``.
    It is written into a uniquely named temporary directory beside it and renamed into place
    (:func:`fastmde._atomic.atomic_directory`), so a half-written dataset is never seen and
    concurrent callers agree on one copy."""
    from .._atomic import atomic_directory

    h, w = parse_size(size)
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
    if int(views) < 1:
        raise ValueError(f"views (frames per training room) must be >= 1, got {views}")
    name = f"synthetic-v2-{h}x{w}-train{int(train)}-views{int(views)}-val{int(val)}-seed{int(seed)}"
    root = os.path.join(cache_dir, name)
    if os.path.isdir(root):
        return root
    if int(train) < 0 or int(val) < 0 or int(train) + int(val) == 0:
        raise ValueError(f"need train >= 0, val >= 0 and at least one frame, got train={train}, val={val}")
    with atomic_directory(root) as tmp:
        _write_dataset(tmp, int(train), int(val), int(seed), "frames", (h, w), int(views), False, progress, 1)
    return root
