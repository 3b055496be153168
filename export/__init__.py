"""Lowering and verification: ONNX export, backends, parity, FPS, reports (`deploy_nas.export`).

The backend runtimes send usage telemetry by default; this tool opts out for every call it makes (every path to
`import openvino` or `import onnxruntime` in deploy_nas goes through this package first):

* OpenVINO and NNCF start a child process that reaches for the network and write consent, client-id and stats
  files under ~/intel, unless `openvino_telemetry` cannot be imported, when both fall back to no-op stubs.
* onnxruntime (1.2x+, Linux) uploads events and writes a device id and an offline event store under
  ~/.cache/Microsoft/DeveloperTools/.onnxruntime unless ORT_DISABLE_TELEMETRY is set before it initializes.
A value the user set is left as it is.
"""
import os
import sys

sys.modules.setdefault("openvino_telemetry", None)
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("ORT_TELEMETRY_DISABLED", "1")
