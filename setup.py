"""Install the osbuild engine, the ociarchive package, their commands and the modules"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

MODULE_FOLDERS = ["stages", "assemblers", "inputs", "runners", "sources"]


class BuildWithModules(build_py):
    """Also copy the module folders into the package as osbuild/_libdir/"""

    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        target = os.path.join(self.build_lib, "osbuild", "_libdir")
        for folder in MODULE_FOLDERS:
            source = os.path.join(here, folder)
            if os.path.isdir(source):
                destination = os.path.join(target, folder)
                shutil.rmtree(destination, ignore_errors=True)
                shutil.copytree(source, destination)  # keeps the executable bits


setup(
    name="osbuild",
    version="1.0.0",
    description="Build operating system images and OCI archives from JSON manifests",
    license="Apache-2.0",
    packages=["osbuild", "osbuild.formats", "osbuild.util", "ociarchive"],
    package_data={"osbuild": ["schemas/*.json"]},
    python_requires=">=3.9",
    install_requires=["jsonschema"],
    entry_points={"console_scripts": ["osbuild = osbuild.__main__:main", "osbuild-oci = osbuild.oci_cli:main"]},
    cmdclass={"build_py": BuildWithModules},
)
