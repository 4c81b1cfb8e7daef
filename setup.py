"""Maps the top-level ``kernels/`` folder to the subpackage ``fastlora.kernels`` (DESIGN.md §4)."""
from setuptools import find_packages, setup

packages = find_packages(include=["fastlora", "fastlora.*"]) + ["fastlora.kernels"]
setup(packages=packages, package_dir={"fastlora": "fastlora", "fastlora.kernels": "kernels"},
      package_data={"fastlora": ["specs/*.toml"]}, include_package_data=True)
