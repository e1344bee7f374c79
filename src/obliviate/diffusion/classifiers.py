"""Factor classifiers: one small CNN per factor (object, colour, style, background) that scores generated images.

Each is trained on fresh renders of the image world with their ground-truth labels (`world.sample_images`), never
on a model's generations, so it judges every model alike. Inputs get a random amount of Gaussian pixel noise
(sigma up to 0.15 on the [-1, 1] scale) and a mild blur (up to 30% of a 3x3 box blur blended in), so that the
slightly noisy or soft samples of a tiny diffusion model are scored by their content, not rejected by their grain;
a texture blurred away entirely is still not recognised, as it should not be. The penultimate layer (`features`) feeds a classifier-feature FID.

Architecture, per factor (defaults): conv3x3(3->w) conv3x3(w->w) maxpool conv3x3(w->2w) maxpool conv3x3(2w->2w)
adaptive-avg-pool 2x2, linear(8w->feature_dim), ReLU [= features], linear(feature_dim->classes). It is independent
of the image size. Saved as `classifiers.safetensors` + `classifiers.json` (no pickles).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from obliviate.core.errors import UsageError
from obliviate.core.shards import map_shards
from obliviate.diffusion.world import FACTORS, ImageWorldSpec, load_image_world, sample_images, spec_of


class FactorCNN(nn.Module):
    """images [N, 3, H, W] in [-1, 1] -> logits [N, classes]; `features` is the penultimate layer [N, feature_dim]."""

    def __init__(self, n_classes: int, width: int = 16, feature_dim: int = 64):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * w, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class ClassifierConfig:
    """How the classifiers are trained; `__post_init__` rejects what cannot work."""

    steps: int = 1000  # per factor
    batch_size: int = 128
    lr: float = 3e-3  # Adam, cosine-decayed to 0
    width: int = 16
    feature_dim: int = 64
    pool: int = 8192  # fresh renders shared by the factors (each image carries every label)
    max_noise: float = 0.15  # per-image Gaussian pixel-noise sigma ~ U(0, max_noise)
    max_blur: float = 0.3  # per-image blend weight ~ U(0, max_blur) of a 3x3 box blur (softer samples)
    n_eval: int = 1000  # fresh held-out renders scored at the end (another seed)
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "width", "feature_dim", "pool", "n_eval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.lr <= 0 or self.max_noise < 0 or not 0 <= self.max_blur <= 1:
            raise ValueError("lr must be > 0, max_noise >= 0 and max_blur in [0, 1]")


def to_input(images) -> torch.Tensor:
    """uint8 [N, H, W, 3] (numpy or torch) or float [N, 3, H, W] in [-1, 1] -> float32 [N, 3, H, W] in [-1, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if images.dtype == torch.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be [N, H, W, 3] (got {list(images.shape)})")
        return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"float images must be [N, 3, H, W] (got {list(images.shape)})")
    return images.float().clamp(-1.0, 1.0)


class FactorClassifiers:
    """One FactorCNN per factor, with the ordered value names each one predicts."""

    def __init__(self, values: dict[str, list[str]], models: dict[str, FactorCNN], size: int, meta: dict | None = None):
        self.values, self.models, self.size, self.meta = values, models, size, meta or {}
        for m in self.models.values():
            m.eval()

    @property
    def factors(self) -> list[str]:
        return list(self.models)

    @torch.no_grad()
    def _run(self, images, fn, batch_size: int = 1024) -> dict[str, torch.Tensor]:
        x = to_input(images)
        out = {}
        for f, m in self.models.items():
            dev = next(m.parameters()).device
            out[f] = torch.cat([fn(m, x[i : i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)])
        return out

    def predict(self, images) -> dict[str, torch.Tensor]:
        """{factor: LongTensor [N] of value indices into `values[factor]`}."""
        return {f: lg.argmax(-1) for f, lg in self._run(images, lambda m, x: m(x)).items()}

    def predict_names(self, images) -> dict[str, list[str]]:
        return {f: [self.values[f][i] for i in idx.tolist()] for f, idx in self.predict(images).items()}

    def features(self, images, factors=None) -> torch.Tensor:
        """Penultimate-layer features [N, len(factors) * feature_dim], the factors' concatenated in order."""
        feats = self._run(images, lambda m, x: m.features(x))
        return torch.cat([feats[f] for f in (factors or self.factors)], dim=1)

    def accuracy(self, images, labels) -> dict[str, float]:
        """{factor: share predicted right}. `labels`: {factor: [value name or index]} or label rows (dicts); a
        None label (a prompt that names no background, say) is left out of that factor's score."""
        if isinstance(labels, list):
            labels = {f: [r.get(f) for r in labels] for f in self.factors if any(f in r for r in labels)}
        pred = self.predict(images)
        acc = {}
        for f, ys in labels.items():
            ys = ys.tolist() if hasattr(ys, "tolist") else list(ys)
            keep = [
                (i, y if isinstance(y, int) else self.values[f].index(y)) for i, y in enumerate(ys) if y is not None
            ]
            if keep:
                acc[f] = sum(int(pred[f][i]) == y for i, y in keep) / len(keep)
        return acc

    def save(self, d: str | Path) -> None:
        """`classifiers.safetensors` (every tensor, keyed factor.name) + `classifiers.json` (values, shapes, meta)."""
        from safetensors.torch import save_file

        d = Path(d)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"{f}.{k}": v.detach().cpu().contiguous() for f, m in self.models.items() for k, v in m.state_dict().items()
        }
        save_file(tensors, str(d / "classifiers.safetensors.tmp"))
        (d / "classifiers.safetensors.tmp").replace(d / "classifiers.safetensors")
        first = next(iter(self.models.values()))
        info = {
            "kind": "obliviate-factor-classifiers",
            "factors": self.factors,
            "values": self.values,
            "size": self.size,
            "width": first.body[0].out_channels,
            "feature_dim": first.head.in_features,
            "meta": self.meta,
        }
        (d / "classifiers.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, d: str | Path, device: str = "cpu") -> "FactorClassifiers":
        from safetensors.torch import load_file

        d = Path(d)
        if not (d / "classifiers.json").is_file() or not (d / "classifiers.safetensors").is_file():
            raise UsageError(f"{d} holds no factor classifiers (classifiers.json + classifiers.safetensors)")
        info = json.loads((d / "classifiers.json").read_text(encoding="utf-8"))
        tensors = load_file(str(d / "classifiers.safetensors"), device=device)
        models = {}
        for f in info["factors"]:  # the saved order: `features` concatenates in it
            m = FactorCNN(len(info["values"][f]), info["width"], info["feature_dim"])
            m.load_state_dict({k[len(f) + 1 :]: v for k, v in tensors.items() if k.startswith(f + ".")})
            models[f] = m.to(device)
        return cls({f: info["values"][f] for f in info["factors"]}, models, info["size"], info.get("meta"))


def _box_blur(x: torch.Tensor) -> torch.Tensor:
    """3x3 mean filter per channel, edges replicated: [N, 3, H, W] -> same."""
    k = torch.full((3, 1, 3, 3), 1 / 9, dtype=x.dtype)
    return nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)


def _as_spec(spec_or_world) -> ImageWorldSpec:
    if isinstance(spec_or_world, ImageWorldSpec):
        return spec_or_world
    if isinstance(spec_or_world, dict):
        return spec_of(spec_or_world)
    return spec_of(load_image_world(spec_or_world))


def fresh_accuracy(clf: FactorClassifiers, spec_or_world, n: int = 1000, seed: int = 12345) -> dict[str, float]:
    """Accuracy on n freshly rendered images (a generator seeded apart from the world's and the training pool's)."""
    spec = _as_spec(spec_or_world)
    images, labels = sample_images(spec, n, np.random.default_rng([spec.seed, 104729, seed]))
    return clf.accuracy(images, {f: labels[f].tolist() for f in clf.factors})


def train_factor_classifiers(
    spec_or_world,
    steps: int | None = None,
    seed: int | None = None,
    config: ClassifierConfig | None = None,
    factors=FACTORS,
    device: str = "cpu",
    log=None,
) -> FactorClassifiers:
    """Train one FactorCNN per factor on fresh renders of the world (an ImageWorldSpec, a built or loaded world, or
    its directory). `steps` / `seed` override the config's. The factors train side by side, in as many Python
    threads as the caller's torch thread count, at one intra-op thread each: the classifiers do not depend on the
    thread count.
    The result's `meta` records the config, each factor's training seconds and its accuracy on fresh renders."""
    spec = _as_spec(spec_or_world)
    cfg = config or ClassifierConfig()
    cfg = ClassifierConfig(**(asdict(cfg) | {k: v for k, v in (("steps", steps), ("seed", seed)) if v is not None}))
    unknown = [f for f in factors if f not in FACTORS]
    if unknown:
        raise UsageError(f"unknown factor {unknown[0]!r}; known: {', '.join(FACTORS)}")
    values = spec.values()
    t0 = time.perf_counter()
    pool_np, labels_np = sample_images(spec, cfg.pool, np.random.default_rng([spec.seed, 7919, cfg.seed]))
    pool = to_input(pool_np)
    render_s = time.perf_counter() - t0
    # each factor's model is initialised here, in order (torch's global generator), then trained in its own
    # thread at one intra-op thread with its own generator: the classifiers are the same at any thread count
    # (core.shards), and the factors train side by side
    jobs = []
    for n_f, f in enumerate(factors):
        torch.manual_seed(cfg.seed * 1000 + n_f)  # parameter initialisation
        model = FactorCNN(len(values[f]), cfg.width, cfg.feature_dim).to(device)
        jobs.append((f, model, torch.Generator().manual_seed(cfg.seed * 1000 + n_f)))

    def train_one(job) -> float:
        f, model, gen = job
        t0 = time.perf_counter()
        ys = torch.from_numpy(labels_np[f]).long()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
        model.train()
        for step in range(cfg.steps):
            idx = torch.randint(0, cfg.pool, (cfg.batch_size,), generator=gen)
            x = pool[idx]
            a = torch.rand(cfg.batch_size, 1, 1, 1, generator=gen) * cfg.max_blur
            x = (1 - a) * x + a * _box_blur(x)
            sigma = torch.rand(cfg.batch_size, 1, 1, 1, generator=gen) * cfg.max_noise
            x = x + sigma * torch.randn(x.shape, generator=gen)
            loss = nn.functional.cross_entropy(model(x.to(device)), ys[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if log and (step + 1) % max(1, cfg.steps // 4) == 0:
                log(f"{f:10s} step {step + 1:4d}/{cfg.steps} loss {loss.item():.4f}")
        model.eval()
        return round(time.perf_counter() - t0, 2)

    seconds = dict(zip(factors, map_shards(train_one, jobs)))
    models = {f: model for f, model, _ in jobs}
    meta = {"config": asdict(cfg), "spec": asdict(spec), "render_seconds": round(render_s, 2), "train_seconds": seconds}
    clf = FactorClassifiers({f: values[f] for f in factors}, models, spec.size, meta)
    clf.meta["fresh_accuracy"] = fresh_accuracy(clf, spec, n=cfg.n_eval, seed=cfg.seed)
    return clf
