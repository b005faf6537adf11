"""Build and install fastmde.

``pip install --no-build-isolation -e .`` (torch must be installed first: the C++ extension is
compiled against the torch in the environment, so the build must not run in an isolated one).

* ``fastmde._C`` is built from every ``csrc/*.cpp`` with ``torch.utils.cpp_extension`` (ninja,
  -O3, OpenMP for ``at::parallel_for``). If it cannot be built, the install goes on without it
  and ``import fastmde`` falls back to the PyTorch reference with a warning.
  ``FASTMDE_NO_EXTENSION=1`` skips it; ``FASTMDE_PORTABLE=1`` drops ``-march=native``.
* the top-level ``kernels/`` directory is installed as ``fastmde.kernels`` by
  ``package_dir={"fastmde.kernels": "kernels"}``, with no import-time tricks in fastmde:
  a normal install (wheel, ``pip install .``) copies ``kernels/*.py`` into
  ``site-packages/fastmde/kernels/``; an editable install (``pip install -e .``, setuptools >= 64,
  PEP 660) cannot express that mapping with a plain path entry, so setuptools writes a finder
  (``__editable___fastmde_*_finder.py``, loaded by a ``.pth`` file) whose static mapping
  ``{"fastmde": "<repo>/fastmde", "fastmde.kernels": "<repo>/kernels"}`` imports the package
  and the kernels from the checkout (edits apply at once; a new top-level file needs a
  reinstall). Run from a checkout that is not installed, ``fastmde.kernels`` is absent and
  ``fastmde.backends()`` reports Triton unavailable (install it, as above).
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def extension_modules():
    if os.environ.get("FASTMDE_NO_EXTENSION") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("fastmde: torch is not installed, building without the C++ extension", file=sys.stderr)
        return [], {}

    class OptionalBuildExtension(BuildExtension):
        """Build the extension if possible; a failed build leaves fastmde on the reference."""

        def run(self):
            try:
                super().run()
            except Exception as exc:  # no compiler, missing headers, ...
                print(f"fastmde: WARNING: the C++ extension was not built ({exc})", file=sys.stderr)

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:
                print(f"fastmde: WARNING: building {ext.name} failed ({exc})", file=sys.stderr)

    flags = ["-O3", "-fopenmp"]
    if os.environ.get("FASTMDE_PORTABLE") != "1":
        flags.append("-march=native")
    sources = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))
    ext = CppExtension(
        "fastmde._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": flags},
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()
EXPORT_REQUIRES = ["onnx", "onnxruntime", "onnxscript"]

setup(
    name="fastmde",
    version="0.1.0",
    description="Train monocular depth estimation models fast and cheaply: fused kernels, models, data, training",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fastmde", "fastmde.*"]) + ["fastmde.kernels"],
    package_dir={"fastmde.kernels": "kernels"},
    package_data={"fastmde.data": ["*.txt"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        "torch>=2.4",
        "numpy",
        "h5py",
        "pillow",
        "tqdm",
        "triton; platform_system == 'Linux'",
    ],
    # `pip install fastmde[export]`: fastmde.export / `fastmde export` to ONNX (verified in
    # onnxruntime); the tests run the exports, so CI's test extra installs them too
    extras_require={"export": EXPORT_REQUIRES, "test": ["pytest", "pytest-xdist", "hypothesis", *EXPORT_REQUIRES]},
    # the console script enters through a module outside the package, so that a Ctrl-C while
    # `import fastmde` loads torch is one line too (_fastmde_cli.py says why)
    py_modules=["_fastmde_cli"],
    entry_points={"console_scripts": ["fastmde = _fastmde_cli:console_main"]},
    zip_safe=False,
)
