"""osbuild: build operating-system images from JSON manifests

Kept free of imports: module scripts import `osbuild.api` inside the sandbox
with nothing but the standard library.
"""

__version__ = "1.0.0"
