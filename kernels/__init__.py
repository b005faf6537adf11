"""Triton GPU kernels of fastmde, one file per hot path (installed as ``fastmde.kernels``).

Each file defines private ``_x_kernel`` Triton functions and host launchers named like the
op's entry points (see ``fastmde/_backend.py``). Under ``TRITON_INTERPRET=1`` (set before
import) they run on CPU tensors, which is how CI checks them.
"""
