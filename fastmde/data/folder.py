"""``Folder``: your own photos and depth maps, paired by file name under two folders.

::

    photos/kitchen/0001.jpg   <->   depth/kitchen/0001.png   (16-bit, value / depth_scale metres)
    photos/0002.png           <->   depth/0002.npy           (float metres)

Both folders are searched recursively; a photo and a depth map pair when their paths below
their folders are equal without the extension (``kitchen/0001``). Every photo must have
exactly one depth map: a photo without one, or two files of one name (``0001.png`` and
``0001.npy``) is an error naming them; depth maps without a photo are counted in a warning.
"""
from __future__ import annotations

import os
import warnings

from ._common import IMAGE_EXTENSIONS, DataFormatError
from .depth_files import DEPTH_EXTENSIONS, PairedFiles


def _files_by_stem(root: str, extensions: tuple[str, ...], what: str) -> dict[str, str]:
    """``{relative path without extension (normalised case): path}`` of the files under ``root``."""
    found: dict[str, str] = {}
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in extensions or name.startswith("."):
                continue
            path = os.path.join(folder, name)
            key = os.path.normcase(os.path.relpath(os.path.join(folder, stem), root))
            if key in found:
                raise DataFormatError(f"{root}: two {what} files of one name: {found[key]} and {path} "
                                      "(pairs are made by name; keep one)")
            found[key] = path
    return found


class Folder(PairedFiles):
    """Photos under ``images`` paired with depth maps under ``depths`` by relative file name.

    Args:
        images: the photo folder (``.png .jpg .jpeg .bmp .tif .tiff .webp .ppm``, any depth of
            sub-folders).
        depths: the depth folder: 16-bit ``.png`` (value / ``depth_scale`` metres, 0 = no
            measurement) or ``.npy`` (float metres).
        depth_scale: the PNG value of one metre (NYU 1000, KITTI 256); needed for ``.png`` depth.
        kb_crop: keep the bottom 352 rows and central 1216 columns of every frame (KITTI).
        max_depth: the dataset's range in metres, for the wrong-scale warning (None: no check).

    Items: see :class:`~fastmde.data.depth_files.PairedFiles` (no focal length).
    ``image_paths[i]`` / ``depth_paths[i]`` name item ``i``'s files, in sorted order of their
    relative names; ``scenes[i]`` is the photo's sub-folder ("" at the top).

    Raises:
        FileNotFoundError: a folder is missing, or a photo has no depth map (the first few named).
        DataFormatError: the two folders are one, two files share a name, or there are no photos.
    """

    def __init__(self, images, depths, *, depth_scale: float | None = None, kb_crop: bool = False,
                 max_depth: float | None = None):
        super().__init__(depth_scale=depth_scale, kb_crop=kb_crop, max_depth=max_depth)
        self.images, self.depths = os.fspath(images), os.fspath(depths)
        for name, root in (("image folder", self.images), ("depth folder", self.depths)):
            if not os.path.isdir(root):
                raise FileNotFoundError(f"{name} {root!r}: no such directory")
        if os.path.samefile(self.images, self.depths):
            raise DataFormatError(f"{self.images}: photos and depth maps must be in two folders (they pair by name)")
        photos = _files_by_stem(self.images, IMAGE_EXTENSIONS, "photo")
        if not photos:
            raise DataFormatError(f"{self.images}: holds no photo ({' '.join(IMAGE_EXTENSIONS)})")
        maps = _files_by_stem(self.depths, DEPTH_EXTENSIONS, "depth")
        lonely = [photos[k] for k in sorted(photos) if k not in maps]
        if lonely:
            more = f" (and {len(lonely) - 3} more)" if len(lonely) > 3 else ""
            raise FileNotFoundError(f"{self.depths}: no depth map (.png or .npy of the same name) for "
                                    f"{len(lonely)} photo(s): " + ", ".join(lonely[:3]) + more)
        unused = len(set(maps) - set(photos))
        if unused:
            warnings.warn(f"{self.depths}: {unused} depth map(s) have no photo of the same name in {self.images}: "
                          "not used", UserWarning, stacklevel=2)
        for key in sorted(photos):
            self.image_paths.append(photos[key])
            self.depth_paths.append(maps[key])
            self.focals.append(None)
            self.scenes.append(os.path.dirname(os.path.relpath(photos[key], self.images)))

    def __repr__(self) -> str:
        return (f"Folder({self.images!r}, {self.depths!r}, items={len(self)}, depth_scale={self.depth_scale}, "
                f"kb_crop={self.kb_crop})")
