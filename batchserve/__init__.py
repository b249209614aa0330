"""batchserve: a dynamically batching inference server for image-classification CNNs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("batchserve")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
