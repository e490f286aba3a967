"""Packages and package data (everything else is in pyproject.toml).

The visualizer's files live in the top-level `static/` of the checkout and are installed as the package
`ticketblitz.static`, every file of the tree whatever its type, so that `pip install .` (not editable)
serves `/` as a checkout does. Each folder of the trees is listed as a package, so that setuptools
installs its files as package data without warnings; `ticketblitz/config.py` finds them through
importlib.resources.
"""

from setuptools import find_namespace_packages, setup

STATIC = "ticketblitz.static"

setup(
    packages=[
        *find_namespace_packages(include=["ticketblitz", "ticketblitz.*"]),
        STATIC,
        *(f"{STATIC}.{name}" for name in find_namespace_packages(where="static")),
    ],
    package_dir={STATIC: "static"},
    package_data={"": ["*", "**/*"]},
    exclude_package_data={"": ["__pycache__/*", "*.py[co]"]},
)
