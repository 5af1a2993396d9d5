"""Build script. The package is pure Python; csrc/ holds the optional CUDA extension."""
from setuptools import setup

setup()
