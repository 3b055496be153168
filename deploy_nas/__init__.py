"""deploy_nas: a deployment compiler for Vision-Transformer NAS supernets.

The torch-only core: families (search spaces, supernets, importers), materialization to dense models, search and
training. Backends live in `deploy_nas.export` and are imported on demand.
"""
__version__ = "0.2.0"

from deploy_nas.dense import ARCHS, DenseSpec, build_dense, load_dense, save_dense  # noqa: E402
from deploy_nas.errors import DeployNASError  # noqa: E402
from deploy_nas.family import FAMILIES  # noqa: E402
from deploy_nas.materialize import materialize  # noqa: E402
from deploy_nas.spaces import PRESETS, SPACES, load_config, load_space  # noqa: E402
from deploy_nas.supernets import load_official, load_supernet, save_supernet  # noqa: E402

__all__ = ["ARCHS", "DenseSpec", "DeployNASError", "FAMILIES", "PRESETS", "SPACES", "build_dense", "load_config",
           "load_dense", "load_official", "load_space", "load_supernet", "materialize", "save_dense", "save_supernet"]
