"""Packaging; metadata lives in pyproject.toml. The optional CUDA extension is built here (see csrc/)."""

from setuptools import setup

setup()
