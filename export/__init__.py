"""Lowering and verification: ONNX export, backends, parity, FPS, reports (`deploy_nas.export`)."""
