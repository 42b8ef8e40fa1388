"""Package discovery for setuptools (everything else is in pyproject.toml).

models/ and guides/ are top-level folders of the repository that install as
pyro_vae.models and pyro_vae.guides: one import name per module. Every
package below the three folders is found here, so a new sub-package is never
silently left out of the wheel (tests/test_architecture.py checks it).
"""

from setuptools import find_packages, setup

ROOTS = {"pyro_vae": "pyro_vae", "pyro_vae.models": "models", "pyro_vae.guides": "guides"}


def packages_and_folders(roots=ROOTS):
    """(every package name, package -> folder) for the folders ``roots``."""
    packages = []
    for name, folder in roots.items():
        packages += [name, *(f"{name}.{sub}" for sub in find_packages(folder))]
    return packages, dict(roots)


if __name__ == "__main__":
    packages, package_dir = packages_and_folders()
    setup(packages=packages, package_dir=package_dir)
