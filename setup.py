"""Maps ``kernels/`` to ``fastlora.kernels`` (docs/design.md §4) and ``bench/baselines/`` to ``fastlora.baselines``."""
from setuptools import find_packages, setup

packages = [*find_packages(include=["fastlora", "fastlora.*"]), "fastlora.kernels", "fastlora.baselines"]
setup(packages=packages,
      package_dir={"fastlora": "fastlora", "fastlora.kernels": "kernels", "fastlora.baselines": "bench/baselines"},
      package_data={"fastlora": ["specs/*.toml"]}, include_package_data=True)
