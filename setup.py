"""Build and install fastgpt.

The folder ``kernels/`` is installed as ``fastgpt.kernels`` ("kernels" alone is
taken on PyPI). Install for development with::

    pip install "setuptools>=77" wheel
    pip install --no-build-isolation -e .

``--no-build-isolation`` matters: build isolation would pull a second torch to
compile the extension.

The C++/CUDA extension ``fastgpt._C`` (sources in ``csrc/``) is built here
with the torch already installed: the CPU implementation always, the CUDA
kernels too when that torch has CUDA and nvcc is found (CUDA_HOME; when
that build fails, the CPU kernels alone). It is
optional: without torch at build time, without a compiler, or when the build
fails, the install still succeeds (with a warning) and fastgpt JIT-compiles
the extension at first use, or serves the reference path (see
fastgpt/extension.py). ``FASTGPT_BUILD_EXT=0`` skips it; ``TORCH_CUDA_ARCH_LIST``
picks the GPU architectures (default: the visible GPU's).
"""
import os
import sys

from setuptools import setup

CPU_SOURCES = ["csrc/binding.cpp", "csrc/dropout_add_cpu.cpp"]
CUDA_SOURCES = ["csrc/dropout_add_cuda.cu"]


def _warn(msg):
    print(f"fastgpt setup: {msg}", file=sys.stderr)


def _said(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e)[:300]}"


def _warn_failed(e: Exception):
    _warn(f"building fastgpt._C failed ({_said(e)}); the install goes on and fastgpt will JIT-compile it at first "
          "use or use the reference path")


def extension_build():
    """(ext_modules, cmdclass) for fastgpt._C, or ([], {}) when it cannot be built here."""
    if os.environ.get("FASTGPT_BUILD_EXT", "1") == "0":
        _warn("FASTGPT_BUILD_EXT=0: not building fastgpt._C (it is JIT-compiled at first use)")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        _warn("torch is not importable at build time (use --no-build-isolation); fastgpt._C is not "
              "prebuilt and will be JIT-compiled at first use")
        return [], {}

    cuda = bool(torch.version.cuda) and CUDA_HOME is not None
    if cuda and not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        # without a visible GPU, torch would compile for every architecture it knows
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    common = dict(name="fastgpt._C", include_dirs=[os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")])
    cpu_ext = CppExtension(sources=CPU_SOURCES, extra_compile_args={"cxx": ["-O3"]}, **common)
    ext = cpu_ext
    if cuda:
        ext = CUDAExtension(sources=CPU_SOURCES + CUDA_SOURCES, extra_compile_args={
            "cxx": ["-O3", "-DFASTGPT_WITH_CUDA"], "nvcc": ["-O3", "-lineinfo"]}, **common)

    class OptionalBuildExt(BuildExtension):
        """A failed extension build warns instead of failing the install."""

        def run(self):
            try:
                super().run()
            except Exception as e:  # no compiler, a toolchain error: fall back to JIT / reference
                _warn_failed(e)

        def build_extensions(self):
            try:
                super().build_extensions()
                return
            except Exception as e:
                failure = e
            ext = self.extensions[0]
            if ext.sources != cpu_ext.sources:   # an incomplete CUDA toolkit (nvcc without its headers, say): the
                for k in ("sources", "extra_compile_args", "include_dirs", "library_dirs", "libraries"):
                    setattr(ext, k, getattr(cpu_ext, k))   # CPU kernels at least (fastgpt.extension JIT-builds
                try:                                       # the CUDA ones where a GPU is)
                    super().build_extensions()
                    _warn(f"building fastgpt._C with CUDA failed ({_said(failure)}); built its CPU kernels only")
                    return
                except Exception:
                    pass
            self.extensions = []   # (nothing to copy in place)
            _warn_failed(failure)

    return [ext], {"build_ext": OptionalBuildExt.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_build()

setup(
    name="fastgpt",
    version="0.1.0",
    description="GPT training engine with fused Triton kernels and a C++/CUDA extension",
    python_requires=">=3.10",
    packages=["fastgpt", "fastgpt.kernels"],
    package_dir={"fastgpt": "fastgpt", "fastgpt.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=["torch>=2.6", "numpy", "tiktoken", "safetensors", "tqdm", "tomli>=1.1; python_version < '3.11'"],
    extras_require={"triton": ["triton>=3.2"], "test": ["pytest", "transformers"]},
)
