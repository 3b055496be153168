"""Operators the dense models use, each with a reference form and the fast, export-friendly form
(installed as `deploy_nas.kernels`)."""
from . import relpos

__all__ = ["relpos"]
