"""Train and export the small ReLU networks shipped in models/.

Reproducible: fixed seeds, deterministic torch kernels, CPU only, 2 threads.
Needs: pip install torch==2.13.0 scikit-learn onnx onnxruntime onnxscript numpy
Run:   python models/train.py        (about 30 s on 2 cores)

Only this script needs torch / scikit-learn; the verifier reads the .onnx files.
"""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

OUT = os.path.dirname(os.path.abspath(__file__))
EPS = 0.05          # L-inf radius (in [0,1] pixel units) used for PGD training and evaluation
N_TRAIN = 1500      # first 1500 images train, remaining 297 test (fixed, no shuffling)
TS_OPSET = 17       # opset for the TorchScript exporter (dynamo model uses 18)

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)


# ---------------------------------------------------------------- data
def load_data():
    # The 8x8 digits (UCI optdigits test part) ship inside scikit-learn: no download.
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # pixels 0..16 -> [0,1]
    y = d.target.astype(np.int64)
    return (torch.from_numpy(x[:N_TRAIN]), torch.from_numpy(y[:N_TRAIN]),
            torch.from_numpy(x[N_TRAIN:]), torch.from_numpy(y[N_TRAIN:]))


# ---------------------------------------------------------------- models
class Normalize(nn.Module):
    """(x - mean) / std with scalar constants, so the exported graph contains Sub and Div."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x):
        return (x - self.mean) / self.std


def mlp(*widths):
    """Flatten + Linear/ReLU stack, e.g. mlp(64, 32, 32, 10)."""
    layers = [nn.Flatten()]
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return layers


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),              # 8x8x8  = 512 ReLUs
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),   # 16x4x4 = 256 ReLUs
        nn.Flatten(), nn.Linear(256, 32), nn.ReLU(),           # 32 ReLUs
        nn.Linear(32, 10))


def cnn_maxpool():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),  # 512 ReLUs
        nn.MaxPool2d(2),                                               # -> 8x4x4
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),                     # 256 ReLUs
        nn.Flatten(), nn.Linear(256, 32), nn.ReLU(),                   # 32 ReLUs
        nn.Linear(32, 10))


def count_relus(model):
    """Number of scalar ReLU activations for one input, counted with forward hooks."""
    n = [0]
    hooks = [m.register_forward_hook(lambda m, i, o: n.__setitem__(0, n[0] + o[0].numel()))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model(torch.zeros(1, 1, 8, 8))
    for h in hooks:
        h.remove()
    return n[0]


# ---------------------------------------------------------------- attack / training
def pgd(model, x, y, eps, steps, alpha, gen):
    """Madry-style L-inf PGD with a uniform random start, kept inside the [0,1] pixel box."""
    delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    xa = (x + delta).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        loss = F.cross_entropy(model(xa), y)
        (g,) = torch.autograd.grad(loss, xa)
        xa = xa.detach() + alpha * g.sign()
        xa = torch.min(torch.max(xa, x - eps), x + eps).clamp(0, 1)
    return xa.detach()


def train(model, xtr, ytr, seed, epochs, adversarial=False):
    gen = torch.Generator().manual_seed(seed)  # drives shuffling and PGD random starts
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), 50):
            xb, yb = xtr[perm[i:i + 50]], ytr[perm[i:i + 50]]
            if adversarial:
                # Attack the model in eval mode (no BN here, but keeps the recipe general).
                model.eval()
                xb = pgd(model, xb, yb, EPS, steps=7, alpha=2.5 * EPS / 7, gen=gen)
                model.train()
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        sched.step()
    model.eval()
    return model


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def pgd_accuracy(model, x, y, seed=1234):
    # Stronger than the training attack (20 steps) so the number is not flattering.
    xa = pgd(model, x, y, EPS, steps=20, alpha=EPS / 8, gen=torch.Generator().manual_seed(seed))
    return accuracy(model, xa, y)


# ---------------------------------------------------------------- export / check
def export(model, path, exporter):
    if exporter == "torchscript":
        # With constant folding on, the exporter fuses an eval-mode BatchNorm into the preceding
        # Conv. We want a real BatchNormalization node in the graph, so switch folding off for
        # models that contain BatchNorm (eval mode => it uses the running statistics).
        has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        torch.onnx.export(
            model, (torch.zeros(1, 1, 8, 8),), path, dynamo=False, opset_version=TS_OPSET,
            input_names=["input"], output_names=["logits"], do_constant_folding=not has_bn)
    else:
        # Default (dynamo) exporter; export with batch 2 because torch.export specialises
        # size-1 dims, and declare dim 0 symbolic.
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(
            model, (torch.zeros(2, 1, 8, 8),), path, dynamo=True, opset_version=18,
            input_names=["input"], output_names=["logits"],
            dynamic_shapes=({0: batch},), external_data=False)
        # Make sure the weights are embedded in the single .onnx file.
        m = onnx.load(path)
        onnx.save(m, path, save_as_external_data=False)
        if os.path.exists(path + ".data"):
            os.remove(path + ".data")
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    return m


def check_onnx(model, path, x, batched):
    """Compare onnxruntime against torch on every test image; return max abs logit diff."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    with torch.no_grad():
        ref = model(x).numpy()
    if batched:
        got = sess.run(None, {name: x.numpy()})[0]
    else:  # TorchScript exports have a fixed [1,1,8,8] input
        got = np.concatenate([sess.run(None, {name: x[i:i + 1].numpy()})[0] for i in range(len(x))])
    return float(np.abs(ref - got).max())


def graph_info(m):
    ops = sorted({n.op_type for n in m.graph.node})
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    return ops, dims, opset


# ---------------------------------------------------------------- main
def main():
    xtr, ytr, xte, yte = load_data()
    mean, std = float(xtr.mean()), float(xtr.std())

    # name: (builder, architecture string, training, exporter, epochs, seed)
    specs = {
        "digits_mlp": (lambda: nn.Sequential(*mlp(64, 32, 32, 10)),
                       "Flatten-FC64x32-ReLU-FC32x32-ReLU-FC32x10", "standard", "torchscript", 60, 0),
        "digits_mlp_pgd": (lambda: nn.Sequential(*mlp(64, 50, 50, 10)),
                           "Flatten-FC64x50-ReLU-FC50x50-ReLU-FC50x10", "pgd", "torchscript", 120, 1),
        "digits_mlp_norm": (lambda: nn.Sequential(Normalize(mean, std), *mlp(64, 40, 20, 10)),
                            "Sub-Div-Flatten-FC64x40-ReLU-FC40x20-ReLU-FC20x10", "standard",
                            "torchscript", 60, 2),
        "digits_cnn": (cnn, "Conv1x8k3p1-ReLU-Conv8x16k3s2p1-ReLU-Flatten-FC256x32-ReLU-FC32x10",
                       "standard", "torchscript", 40, 3),
        "digits_cnn_maxpool": (cnn_maxpool, "Conv1x8k3p1-BN-ReLU-MaxPool2-Conv8x16k3p1-ReLU-"
                               "Flatten-FC256x32-ReLU-FC32x10", "standard", "torchscript", 40, 4),
        "digits_mlp_dynamo": (lambda: nn.Sequential(*mlp(64, 48, 24, 10)),
                              "Flatten-FC64x48-ReLU-FC48x24-ReLU-FC24x10", "standard", "dynamo", 60, 5),
    }

    metrics = {}
    for name, (build, arch, method, exporter, epochs, seed) in specs.items():
        torch.manual_seed(seed)  # per-model seed: each model is independent of the others
        model = train(build(), xtr, ytr, seed, epochs, adversarial=(method == "pgd"))
        path = os.path.join(OUT, name + ".onnx")
        m = export(model, path, exporter)
        diff = check_onnx(model, path, xte, batched=(exporter == "dynamo"))
        assert diff < 1e-5, f"{name}: onnxruntime differs from torch by {diff}"
        ops, dims, opset = graph_info(m)
        if name == "digits_cnn_maxpool" and "BatchNormalization" not in ops:
            print("WARNING: exporter folded BatchNorm into Conv")
        metrics[name] = {
            "file": name + ".onnx",
            "architecture": arch,
            "relus": count_relus(model),
            "clean_accuracy": round(accuracy(model, xte, yte), 4),
            "pgd_accuracy_eps0.05": round(pgd_accuracy(model, xte, yte), 4),
            "training": "PGD adversarial (Madry), eps=0.05, 7 steps" if method == "pgd" else "standard",
            "exporter": exporter,
            "opset": opset,
            "input_shape": dims,
            "op_types": ops,
            "onnxruntime_max_abs_diff": diff,
        }
        r = metrics[name]
        print(f"{name:20s} relus={r['relus']:4d} clean={r['clean_accuracy']:.4f} "
              f"pgd={r['pgd_accuracy_eps0.05']:.4f} opset={opset} input={dims} "
              f"ort_diff={diff:.2e} ops={ops}")

    with open(os.path.join(OUT, "metrics.json"), "w") as f:
        json.dump({"dataset": "sklearn load_digits, x/16, test = images 1500..1796 (297)",
                   "pgd_eval": "L-inf eps=0.05, 20 steps, step eps/8, 1 random start",
                   "models": metrics}, f, indent=2)
        f.write("\n")

    # Sample inputs: first 20 TEST images (dataset indices 1500..1519).
    np.savez(os.path.join(OUT, "digits_samples.npz"), x=xte[:20].numpy(), y=yte[:20].numpy())
    np.save(os.path.join(OUT, "digits_sample0.npy"), xte[:1].numpy())
    print("sample0 label:", int(yte[0]))


if __name__ == "__main__":
    main()
