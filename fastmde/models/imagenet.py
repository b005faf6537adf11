"""torchvision's ImageNet weights for the ResNet encoders: the start the paper trained from.

The paper's code builds every encoder with ``torchvision.models.resnetXX(pretrained=True)``
(Freeman & Tilney-Volk ``models.py`` ``E_resnet``; so do Hu et al., BTS, AdaBins and the other
projects), i.e. torchvision's ``IMAGENET1K_V1`` weights. fastmde fetches the same files, by
their published names, through ``torch.hub.load_state_dict_from_url(..., check_hash=True)``:

* a file already in the hub cache, ``$TORCH_HOME/hub/checkpoints/<name>`` (by default
  ``~/.cache/torch/hub/checkpoints``; :func:`cache_dir`), is read as it is, with no network;
* otherwise it is downloaded there once; torch checks the download against the SHA-256 prefix
  in its name (``resnet34-b627a593.pth``: the hash begins ``b627a593``) before keeping it;
* with no cached file and no network, :class:`ImageNetWeightsUnavailable` names the file, the
  folder to put it in and the address to get it from, in one line. The download waits at most
  :data:`TIMEOUT_S` seconds for the server, so an offline machine fails quickly.

The state dict is then loaded with :func:`~fastmde.models.resnet.load_state` (``fc.*`` left
out; every other key and shape must match).
"""
from __future__ import annotations

import contextlib
import os
import socket
import urllib.error

import torch

from .._checks import bool_argument, integer_argument

#: torchvision's ImageNet weights (``ResNetXX_Weights.IMAGENET1K_V1``, what ``pretrained=True``
#: gives), by encoder depth
IMAGENET_URLS = {
    18: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    34: "https://download.pytorch.org/models/resnet34-b627a593.pth",
    50: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    101: "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}
#: seconds a download waits for the server (connection and each read) before giving up
TIMEOUT_S = 20.0


class ImageNetWeightsUnavailable(FileNotFoundError):
    """The ImageNet weights are neither in the hub cache nor downloadable (offline?)."""


def cache_dir() -> str:
    """The folder torch's hub keeps downloaded weights in: ``torch.hub.get_dir()/checkpoints``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def file_name(depth: int) -> str:
    """The published file name of ResNet``depth``'s weights, e.g. ``resnet34-b627a593.pth``."""
    depth = integer_argument(depth, "depth")
    if depth not in IMAGENET_URLS:
        raise ValueError(f"ImageNet weights exist for ResNet depths {sorted(IMAGENET_URLS)}, got {depth!r}")
    return os.path.basename(IMAGENET_URLS[depth])


def cached_file(depth: int) -> str | None:
    """The cached weights file of ResNet``depth``, or None when it is not in the cache."""
    path = os.path.join(cache_dir(), file_name(depth))
    return path if os.path.isfile(path) else None


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """A default socket timeout while downloading (``urllib`` waits forever without one)."""
    before = socket.getdefaulttimeout()
    if before is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        if before is None:
            socket.setdefaulttimeout(None)


def imagenet_state_dict(depth: int, *, progress: bool = True) -> dict:
    """torchvision's ImageNet state dict of ResNet``depth`` (18, 34, 50, 101), ``fc`` included.

    Read from the hub cache when the file is there; downloaded into it (hash checked) when not.

    Raises:
        ImageNetWeightsUnavailable: not cached and the download failed; one line naming the
            file, the folder and the URL.
        RuntimeError: the download does not match the hash in its name (torch's message).
    """
    depth = integer_argument(depth, "depth")
    progress = bool_argument(progress, "progress")
    url, name = IMAGENET_URLS.get(depth), file_name(depth)
    folder = cache_dir()
    if cached_file(depth) is None:
        try:
            with _socket_timeout(TIMEOUT_S):
                return torch.hub.load_state_dict_from_url(url, model_dir=folder, map_location="cpu",
                                                          progress=progress, check_hash=True, weights_only=True)
        except RuntimeError as exc:       # torch's "invalid hash value": the partial file is removed
            raise ValueError(f"the download of {name} from {url} does not match the SHA-256 prefix in its name: "
                             f"{str(exc).splitlines()[0]}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ImageNetWeightsUnavailable(
                f"the ImageNet weights of resnet{depth} are not in the torch hub cache and could not be downloaded "
                f"({reason}): put {name} (from {url}) in {folder} (set TORCH_HOME to use another cache), or pass "
                "--pretrained none / a local .pth file") from None
    try:
        return torch.hub.load_state_dict_from_url(url, model_dir=folder, map_location="cpu", progress=progress,
                                                  check_hash=True, weights_only=True)
    except Exception as exc:
        path = os.path.join(folder, name)
        raise ValueError(f"cached ImageNet weights {path} cannot be read (truncated or corrupt? delete it to "
                         f"download again): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                         ) from None
