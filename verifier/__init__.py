"""Formal robustness verification of ReLU networks (ONNX) by mixed-integer programming.

    import verifier
    net = verifier.load("model.onnx")
    cert = verifier.verify(net, x, label=3, eps=0.02, timeout=60)
    cert.status, cert.margin_lower, cert.counterexample, cert.to_json()
    verifier.verify_vnnlib("model.onnx", "prop.vnnlib", timeout=60)
"""
from .api import load, min_distortion, verify, verify_vnnlib
from .batch import robustness_curve, run_instances
from .certificate import Certificate
from .check import check_certificate
from .config import Options

__all__ = ["load", "verify", "verify_vnnlib", "min_distortion", "check_certificate",
           "robustness_curve", "run_instances", "Certificate", "Options"]
__version__ = "0.1.0"
