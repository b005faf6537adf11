"""Depth maps to 3-D points (pinhole camera) and binary PLY files.

::

    points = fastmde.depth_to_points(depth, (fx, fy, cx, cy))        # (N, 3) metres
    K = fastmde.pointcloud.nyu_kinect((480, 640))                    # NYU's Kinect, scaled to a size
    fastmde.pointcloud.write_ply("room.ply", points, colours)        # binary little-endian

**Convention.** Pixel (u, v) is column u, row v, counted from 0, and its centre has the integer
coordinates (u, v) (OpenCV's convention, which the NYU calibration (RGBDemo, built on OpenCV)
uses). A pixel of depth z (metres along the optical axis, as the depth maps hold) is the point

    x = (u - cx) z / fx,    y = (v - cy) z / fy,    z = z

in the camera frame: x right, y down, z forward (OpenCV). The NYU toolbox's MATLAB
``rgb_plane2rgb_world.m`` indexes pixels from 1 (``meshgrid(1:640, 1:480)``), one pixel off this
convention, and flips y (``[x3 -y3 z3]``); ZoeDepth's and Depth-Anything-V2's point-cloud
scripts count from 0 as here.

**Intrinsics** (:class:`Intrinsics`): focal lengths ``fx``, ``fy`` and principal point ``cx``,
``cy`` in pixels of the depth map. :data:`NYU_KINECT` is the NYU Depth V2 RGB camera at 480x640 (HxW)
(the NYU toolbox's ``camera_params.m``: fx_rgb = 5.1885790117450188e+02, fy_rgb =
5.1946961112127485e+02, cx_rgb = 3.2558244941119034e+02, cy_rgb = 2.5373616633400465e+02; the
focal BTS's NYU file lists carry is the same 518.8579). :meth:`Intrinsics.scaled` resizes
intrinsics to another image size with the pixel-centre convention: ``fx' = fx sx``,
``cx' = (cx + 1/2) sx - 1/2`` with ``sx = W' / W`` (likewise y).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import real_argument

__all__ = ["Intrinsics", "NYU_KINECT", "NYU_KINECT_SIZE", "depth_to_points", "intrinsics_for", "nyu_kinect",
           "valid_depth", "write_ply", "write_point_cloud"]


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels: focal lengths ``fx``, ``fy``; principal point ``cx``, ``cy``
    (pixel centres at integer coordinates, counted from 0: see the module docstring)."""

    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self):
        for name in ("fx", "fy", "cx", "cy"):
            value = getattr(self, name)
            try:   # any real number (numpy's, a 0-d tensor), stored as a float; never a bool or a string
                number = real_argument(value, name)
            except TypeError:
                number = math.nan
            if not math.isfinite(number):
                raise ValueError(f"intrinsics: {name} must be a finite number of pixels, got {value!r}")
            object.__setattr__(self, name, number)
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"intrinsics: focal lengths must be positive, got fx={self.fx}, fy={self.fy}")

    @classmethod
    def of(cls, value) -> "Intrinsics":
        """``value`` as intrinsics: an :class:`Intrinsics`, ``(fx, fy, cx, cy)``, a mapping with
        those keys, or a 3x3 camera matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (numpy or
        torch). Raises ValueError for anything else (a skewed matrix included, and bools or
        strings, which NumPy would read as 1.0 or 500.0)."""
        if isinstance(value, Intrinsics):
            return value
        if isinstance(value, dict):
            missing = [k for k in ("fx", "fy", "cx", "cy") if k not in value]
            if missing:
                raise ValueError(f"intrinsics: missing {', '.join(missing)} (need fx, fy, cx, cy)")
            return cls(*(value[k] for k in ("fx", "fy", "cx", "cy")))
        raw = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
        if raw.dtype.kind not in "iuf" or _holds_bools(value):
            raise ValueError(f"intrinsics must be numbers (fx, fy, cx, cy) or a camera matrix, got {value!r}")
        array = raw.astype(np.float64)
        if array.shape == (4,):
            return cls(*(float(v) for v in array))
        if array.shape == (3, 3):
            k = array
            if k[0, 1] != 0 or k[1, 0] != 0 or k[2, 0] != 0 or k[2, 1] != 0 or k[2, 2] != 1:
                raise ValueError(f"intrinsics: a camera matrix must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], "
                                 f"got {k.tolist()}")
            return cls(float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]))
        raise ValueError(f"intrinsics must be (fx, fy, cx, cy), a dict with those keys or a 3x3 camera matrix, "
                         f"got shape {array.shape}")

    def scaled(self, from_size, to_size) -> "Intrinsics":
        """The intrinsics of the same camera with its image resized from ``from_size`` to
        ``to_size`` ((H, W) each): ``fx sx``, ``fy sy``, ``(cx + 1/2) sx - 1/2``,
        ``(cy + 1/2) sy - 1/2`` with ``sx = W'/W``, ``sy = H'/H``."""
        (h0, w0), (h1, w1) = from_size, to_size
        sx, sy = w1 / w0, h1 / h0
        return Intrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5)

    def matrix(self) -> np.ndarray:
        """The 3x3 camera matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def __str__(self) -> str:
        return f"fx={self.fx:.4f} fy={self.fy:.4f} cx={self.cx:.4f} cy={self.cy:.4f}"


def _holds_bools(value) -> bool:
    """Whether a (nested) list or tuple holds a bool (``np.asarray((True, 1, 0, 0))`` is an
    integer array, so its dtype does not tell)."""
    if isinstance(value, (list, tuple)):
        return any(_holds_bools(v) for v in value)
    return isinstance(value, (bool, np.bool_))


#: NYU Depth V2's Kinect RGB camera at 480x640 (HxW; NYU toolbox camera_params.m)
NYU_KINECT = Intrinsics(fx=5.1885790117450188e02, fy=5.1946961112127485e02,
                        cx=3.2558244941119034e02, cy=2.5373616633400465e02)
NYU_KINECT_SIZE = (480, 640)


def nyu_kinect(size=NYU_KINECT_SIZE) -> Intrinsics:
    """:data:`NYU_KINECT` scaled to an image of ``size`` = (H, W) (see :meth:`Intrinsics.scaled`)."""
    return NYU_KINECT.scaled(NYU_KINECT_SIZE, size)


def intrinsics_for(size, *, fx=None, fy=None, cx=None, cy=None, focal=None) -> tuple[Intrinsics, str]:
    """``(intrinsics, where they come from)`` for an image of ``size`` = (H, W), as ``fastmde
    predict --pointcloud`` chooses them:

    1. ``fx`` given: ``fx``, ``fy`` (default ``fx``), ``cx``, ``cy`` (default the image centre
       ``(W - 1) / 2``, ``(H - 1) / 2``), in pixels of this image;
    2. else ``focal`` (a file list's third field, BTS's convention: ``fx = fy = focal``, principal
       point at the image centre);
    3. else NYU's Kinect (:data:`NYU_KINECT`) scaled to ``size``.

    Raises ValueError for ``fy``/``cx``/``cy`` without ``fx`` or a non-positive focal length.
    """
    h, w = size
    if fx is None:
        given = [n for n, v in (("fy", fy), ("cx", cx), ("cy", cy)) if v is not None]
        if given:
            raise ValueError(f"--{', --'.join(given)} given without --fx: give --fx (and optionally --fy, --cx, "
                             "--cy), or none of them for NYU's Kinect intrinsics")
        if focal is not None:
            return Intrinsics(focal, focal, (w - 1) / 2, (h - 1) / 2), "the file list's focal length"
        return nyu_kinect((h, w)), f"NYU Kinect intrinsics scaled to {h}x{w}"   # HxW, as every size fastmde prints
    k = Intrinsics(fx, fy if fy is not None else fx,
                   cx if cx is not None else (w - 1) / 2, cy if cy is not None else (h - 1) / 2)
    return k, "--fx/--fy/--cx/--cy"


# ---------------------------------------------------------------- points


def _as_map(depth, what: str = "depth"):
    if isinstance(depth, torch.Tensor):
        d = depth
    else:
        d = np.asarray(depth)
    while d.ndim > 2 and d.shape[0] == 1:
        d = d[0]
    if d.ndim != 2:
        raise ValueError(f"{what} must be one (H, W) map ((1, H, W) and (1, 1, H, W) accepted), got shape "
                         f"{tuple(depth.shape)}")
    floating = d.is_floating_point() if isinstance(d, torch.Tensor) else np.issubdtype(d.dtype, np.floating)
    if not floating:
        raise TypeError(f"{what} must hold floating-point metres, got {d.dtype} (convert integer depth maps "
                        "to metres first, e.g. 16-bit millimetres / 1000)")
    return d


def valid_depth(depth):
    """The pixels with a depth: finite and > 0 (bool map, numpy or torch like ``depth``)."""
    d = _as_map(depth)
    if isinstance(d, torch.Tensor):
        return torch.isfinite(d) & (d > 0)
    return np.isfinite(d) & (d > 0)


def depth_to_points(depth, intrinsics):
    """Back-project a depth map to 3-D points with a pinhole camera.

    Args:
        depth: (H, W) depth in metres along the optical axis (numpy or torch, floating;
            (1, H, W) and (1, 1, H, W) accepted). Pixels without depth (0, negative, NaN, inf)
            are left out.
        intrinsics: ``(fx, fy, cx, cy)``, a dict, a 3x3 camera matrix or an :class:`Intrinsics`,
            in pixels of ``depth``.

    Returns:
        (N, 3) points ``(x, y, z)`` in metres, ``x = (u - cx) z / fx``, ``y = (v - cy) z / fy``
        (pixel (u, v) = column, row from 0, centre at integer coordinates; camera frame x right,
        y down, z forward), one per valid pixel in row-major order (the order of
        ``depth[valid_depth(depth)]``); numpy for numpy input (float64 stays, else float32),
        torch (same dtype and device) for torch input.

    Raises:
        ValueError: ``depth`` is not one map, or bad intrinsics. TypeError: integer depth.
    """
    k = Intrinsics.of(intrinsics)
    d = _as_map(depth)
    if isinstance(d, torch.Tensor):
        mask = torch.isfinite(d) & (d > 0)
        v, u = torch.nonzero(mask, as_tuple=True)
        z = d[mask]
        u, v = u.to(d.dtype), v.to(d.dtype)
        return torch.stack(((u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z), dim=1)
    dtype = np.float64 if d.dtype == np.float64 else np.float32
    d = d.astype(dtype, copy=False)
    mask = np.isfinite(d) & (d > 0)
    v, u = np.nonzero(mask)
    z = d[mask]
    x = (u.astype(dtype) - dtype(k.cx)) * z / dtype(k.fx)
    y = (v.astype(dtype) - dtype(k.cy)) * z / dtype(k.fy)
    return np.stack((x, y, z), axis=1)


# ---------------------------------------------------------------- PLY

_PLY_VERTEX = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
_PLY_XYZ = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4")])


def write_ply(path, points, colours=None, *, comments=()) -> int:
    """Write ``points`` (N, 3) metres (and ``colours`` (N, 3) uint8 RGB) as a binary
    little-endian PLY: ``element vertex N`` with ``float x, y, z`` (and ``uchar red, green,
    blue``), 15 (12) bytes per point after the header; ``comments`` become ``comment`` lines.
    Written atomically (:mod:`fastmde._atomic`). Returns N.

    Raises ValueError for shapes that do not fit, non-finite points or non-uint8 colours."""
    from ._atomic import atomic_write

    p = np.asarray(points.detach().cpu() if isinstance(points, torch.Tensor) else points)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("points must be finite (leave out pixels without depth: depth_to_points does)")
    dtype = _PLY_XYZ
    if colours is not None:
        c = np.asarray(colours.detach().cpu() if isinstance(colours, torch.Tensor) else colours)
        if c.shape != p.shape:
            raise ValueError(f"colours must be (N, 3) like the points {p.shape}, got shape {c.shape}")
        if c.dtype != np.uint8:
            raise ValueError(f"colours must be uint8 RGB (0-255), got {c.dtype}")
        dtype = _PLY_VERTEX
    rows = np.empty(len(p), dtype=dtype)
    rows["x"], rows["y"], rows["z"] = p[:, 0], p[:, 1], p[:, 2]
    properties = ["property float x", "property float y", "property float z"]
    if colours is not None:
        rows["red"], rows["green"], rows["blue"] = c[:, 0], c[:, 1], c[:, 2]
        properties += ["property uchar red", "property uchar green", "property uchar blue"]
    for text in comments:
        if "\n" in text or "\r" in text:
            raise ValueError(f"a PLY comment is one line, got {text!r}")
    header = "\n".join(["ply", "format binary_little_endian 1.0", *(f"comment {t}" for t in comments),
                        f"element vertex {len(p)}", *properties, "end_header"]) + "\n"
    with atomic_write(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(rows.tobytes())
    return len(p)


def write_point_cloud(path, depth, image, intrinsics, *, comments=()) -> int:
    """``depth`` (H, W) metres and the photo ``image`` ((3, H, W) or (H, W, 3) uint8 RGB, the
    same size) as a coloured PLY at ``path`` (:func:`depth_to_points`, :func:`write_ply`):
    one point per pixel with a depth. Returns the number of points.

    The layout is told from the depth map's size; a 3x3 image, which fits both, is read as
    (3, H, W) when it is a torch tensor (fastmde's and torchvision's layout) and as (H, W, 3)
    when it is a numpy array (Pillow's and OpenCV's)."""
    d = _as_map(depth)
    d = d.detach().cpu().numpy() if isinstance(d, torch.Tensor) else d
    channels_first = isinstance(image, torch.Tensor)
    rgb = np.asarray(image.detach().cpu() if channels_first else image)
    chw, hwc = rgb.shape == (3, *d.shape), rgb.shape == (*d.shape, 3)
    if chw and (channels_first or not hwc):
        rgb = rgb.transpose(1, 2, 0)
    if rgb.shape != (*d.shape, 3) or rgb.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB of the depth map's size {d.shape}, got {rgb.dtype} "
                         f"{rgb.shape}")
    k = Intrinsics.of(intrinsics)
    points = depth_to_points(d, k)
    mask = np.isfinite(d) & (d > 0)
    return write_ply(path, points, rgb[mask], comments=(
        "fastmde point cloud: metres, camera frame x right y down z forward", f"intrinsics {k}", *comments))
