"""Build and install fastgpt.

The folder ``kernels/`` is installed as ``fastgpt.kernels`` ("kernels" alone is
taken on PyPI). Install for development with::

    pip install "setuptools>=77" wheel
    pip install --no-build-isolation -e .

``--no-build-isolation`` matters: build isolation would pull a second torch to
compile the extension.
"""
from setuptools import setup

setup(
    name="fastgpt",
    version="0.1.0",
    description="GPT training engine with fused Triton kernels and a C++/CUDA extension",
    python_requires=">=3.10",
    packages=["fastgpt", "fastgpt.kernels"],
    package_dir={"fastgpt": "fastgpt", "fastgpt.kernels": "kernels"},
    install_requires=["torch>=2.6", "numpy", "tiktoken", "safetensors", "tqdm"],
    extras_require={"triton": ["triton>=3.2"], "test": ["pytest", "transformers"]},
)
