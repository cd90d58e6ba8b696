"""``vidplan eval calibration --methods bins,c3-fsc,c3-cs,squbed``: three families of uncertainty on one world
model, side by side on the same held-out windows and the same rollouts.

Per split (``val``, ``ood``), windows spread over the episodes are rolled out once with the bundle's flow map
(the heads' ``flow_steps``, seeded noise); a forward hook keeps the backbone features C3's probe reads, so every
method judges the very same predictions:

- ``bins``: the 30-bin UQ head (``models/heads.py``); events P(|err| <= eps) for each eps in ``thresholds``;
  uncertainty = normalised entropy.
- ``c3-fsc`` / ``c3-cs``: C3's probe (``models/c3_probe.py``); FSC's one event at its eps, CS-BC's at every eps
  in ``thresholds``; uncertainty = 1 - q at eps = 0.5 (FSC: its eps).
- ``squbed``: S-QUBED (``models/squbed.py``, n x m extra rollouts per window); it speaks per frame, so its event
  is "the frame's mean |err| <= tau" (tau from its calibration fit) and its probability the fitted map of the
  total entropy; uncertainty = 1 - that probability. Aleatoric / epistemic means are reported beside.

Metrics per method and split: ECE and MCE (10 equal-width bins; the largest over the method's events, as
``eval calibration`` reports the bins head), Brier score (mean over its events), Kendall tau and Pearson r of
per-frame uncertainty with per-frame mean |latent error| (and per element on a random sample of elements, for
the per-element methods), AUROC of "this frame's error is above the split's median" from the per-frame
uncertainty, mean uncertainty and the ``ood`` / ``val`` ratio of it, and the cost per plan: the milliseconds
a method adds to judging the planner's N proposals of one request (the rollout itself not included; it is
reported beside). Writes ``uq_compare.json``, ``uq_compare.md`` (the table), ``reliability_all.png`` (every
reliability diagram in one figure) and ``uq_heatmaps_<split>.png`` (the per-element methods' latent colour maps
of one window).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from vidplan_server.evaluation.calibration import CalibrationAccumulator, auroc, correlation
from vidplan_server.evaluation.heads_quality import SplitData, _true_frames, split_data
from vidplan_server.models.bins import ERROR_BINS
from vidplan_server.models.c3_probe import C3Probe, load_c3_probe, rollout_with_features
from vidplan_server.models.checkpoint import CheckpointError, read_manifest
from vidplan_server.models.heads import UQHead, load_uq_head
from vidplan_server.models.heatmaps import LatentColormap, overlay
from vidplan_server.models.squbed import SqubedCalibration, SqubedConfig, estimate, load_squbed
from vidplan_server.models.world_model import WorldModel

METHODS = ("bins", "c3-fsc", "c3-cs", "squbed")
_MODULE = {"bins": "uq", "c3-fsc": "c3_fsc", "c3-cs": "c3_cs", "squbed": "squbed"}
_TRAIN = {
    "bins": "vidplan train uq --data CALIB --out CKPT",
    "c3-fsc": "vidplan train c3 --method fsc --data CALIB --out CKPT",
    "c3-cs": "vidplan train c3 --method cs --data CALIB --out CKPT",
    "squbed": "vidplan train squbed --data CALIB --out CKPT",
}
REFERENCE_EPS = 0.5  # the eps whose 1 - q is a C3 probe's uncertainty (and the planner's confidence eps)


@dataclass(frozen=True)
class CompareConfig:
    windows: int = 64  # per split
    thresholds: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    n_bins: int = 10
    batch: int = 8
    seed: int = 0
    element_sample: int = 20000  # latent elements per split for the per-element rank correlation
    cost_proposals: int = 12  # N of the cost measurement (the planner's default)
    cost_repeats: int = 3
    squbed: SqubedConfig | None = None  # None: the bundle's (or the defaults)


@dataclass
class Methods:
    names: tuple[str, ...]
    uq: UQHead | None = None
    probes: dict[str, C3Probe] = field(default_factory=dict)
    squbed: SqubedCalibration | None = None

    @property
    def flow_steps(self) -> int:
        if self.uq is not None:
            return self.uq.config.flow_steps
        if self.probes:
            return next(iter(self.probes.values())).config.flow_steps
        return self.squbed.config.squbed.flow_steps if self.squbed is not None else 1


def parse_methods(text: str) -> tuple[str, ...]:
    """``"bins,c3-cs"`` -> ("bins", "c3-cs"); an unknown name raises ValueError naming it and the choices."""
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [n for n in names if n not in METHODS]
    if bad or not names:
        raise ValueError(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(METHODS)}")
    return names


def load_methods(ckpt: str | Path, names: tuple[str, ...], device) -> Methods:
    """The modules of ``names`` from the bundle; a missing one raises naming it and the command that trains it."""
    modules = read_manifest(ckpt)["modules"]
    for n in names:
        if _MODULE[n] not in modules:
            command = _TRAIN[n].replace("CKPT", str(ckpt))
            raise CheckpointError(f"{ckpt}: method {n} needs module {_MODULE[n]!r}; train it with `{command}`")
    m = Methods(names)
    if "bins" in names:
        m.uq = load_uq_head(ckpt).to(device)
    for n in names:
        if n.startswith("c3-"):
            m.probes[n] = load_c3_probe(ckpt, n[3:]).to(device)
    if "squbed" in names:
        m.squbed = load_squbed(ckpt)
    return m


class _Tally:
    """One method's running figures on one split."""

    def __init__(self, events: list[str], n_bins: int) -> None:
        self.events = {e: CalibrationAccumulator(n_bins) for e in events}
        self.brier = dict.fromkeys(events, 0.0)
        self.count = dict.fromkeys(events, 0)
        self.u_frame: list[np.ndarray] = []
        self.u_elem: list[np.ndarray] = []
        self.err_elem: list[np.ndarray] = []
        self.extra: dict[str, list[np.ndarray]] = {}

    def add_event(self, name: str, q: torch.Tensor, outcome: torch.Tensor) -> None:
        q, y = q.detach().double().flatten().cpu(), outcome.detach().double().flatten().cpu()
        self.events[name].add(q, y)
        self.brier[name] += float(((q - y) ** 2).sum())
        self.count[name] += int(q.numel())

    def result(self, err_frame: np.ndarray) -> dict:
        per_event = {}
        for name, acc in self.events.items():
            ece, mce, table = acc.result()
            per_event[name] = {"ece": ece, "mce": mce, "brier": self.brier[name] / self.count[name], "table": table}
        u = np.concatenate(self.u_frame)
        frame_corr = correlation(u, err_frame)
        above = err_frame > np.median(err_frame)
        out = {
            "ece": max(v["ece"] for v in per_event.values()),
            "mce": max(v["mce"] for v in per_event.values()),
            "brier": float(np.mean([v["brier"] for v in per_event.values()])),
            "frame_kendall_tau": frame_corr["kendall_tau"],
            "frame_kendall_p": frame_corr["kendall_p"],
            "frame_pearson_r": frame_corr["pearson_r"],
            "auroc_above_median": auroc(u[above], u[~above]),
            "mean_uncertainty": float(u.mean()),
            "events": per_event,
        }
        if self.u_elem:
            c = correlation(np.concatenate(self.u_elem), np.concatenate(self.err_elem))
            out["element_kendall_tau"], out["element_pearson_r"] = c["kendall_tau"], c["pearson_r"]
        for k, v in self.extra.items():
            out[k] = float(np.concatenate(v).mean())
        return out


def _events(name: str, methods: Methods, cfg: CompareConfig) -> list[str]:
    if name == "bins" or name == "c3-cs":
        return [f"p_le_{e:g}" for e in cfg.thresholds]
    if name == "c3-fsc":
        return [f"p_le_{methods.probes[name].config.eps:g}"]
    return ["frame_le_tau"]


def squbed_config(methods: Methods, cfg: CompareConfig) -> SqubedConfig:
    if cfg.squbed is not None:
        return cfg.squbed
    return methods.squbed.config.squbed if methods.squbed is not None else SqubedConfig()


@torch.no_grad()
def compare_split(model: WorldModel, methods: Methods, split: SplitData, cfg: CompareConfig, progress=True) -> dict:
    device = model.device
    idx = split.windows.spread(cfg.windows)
    tallies = {n: _Tally(_events(n, methods, cfg), cfg.n_bins) for n in methods.names}
    g = torch.Generator().manual_seed(cfg.seed)
    pick = torch.Generator().manual_seed(cfg.seed + 1)
    chunks = idx.split(cfg.batch)
    per_chunk = max(1, cfg.element_sample // max(1, len(chunks)))
    err_frames = []
    sq_cfg = squbed_config(methods, cfg)
    for i, chunk in enumerate(tqdm(chunks, desc="compare", disable=not progress, leave=False)):
        hist, act, fut = split.windows.gather(chunk, device)
        noise = torch.randn(fut.shape, generator=g).to(device)
        pred, feats, emb = rollout_with_features(model.flow_map, hist, act, methods.flow_steps, noise)
        err = (pred - fut).abs()
        err_frames.append(err.mean((2, 3, 4)).flatten().cpu().numpy())
        sample = torch.randint(err.numel(), (per_chunk,), generator=pick).to(device)
        for name in methods.names:
            t = tallies[name]
            if name == "bins":
                logits = methods.uq(pred, hist)
                for e in cfg.thresholds:
                    t.add_event(f"p_le_{e:g}", ERROR_BINS.cdf(logits, e), err <= e)
                u = ERROR_BINS.normalized_entropy(logits)
            elif name.startswith("c3-"):
                probe = methods.probes[name]
                qs = probe.probabilities(feats, emb, cfg.thresholds)
                for e, q in qs.items():
                    t.add_event(f"p_le_{e:g}", q, err <= e)
                ref = REFERENCE_EPS if REFERENCE_EPS in qs else next(iter(qs))
                u = 1.0 - qs[ref]
            else:
                raw = model.normalizer.denormalize(act)
                dec = estimate(model, hist, raw, sq_cfg, seed=cfg.seed + 1000 + i)
                total = torch.as_tensor(dec.total, dtype=torch.float32)
                for k, v in (("mean_aleatoric", dec.aleatoric), ("mean_epistemic", dec.epistemic)):
                    t.extra.setdefault(k, []).append(v.ravel())
                t.extra.setdefault("mean_total_entropy", []).append(dec.total.ravel())
                t.extra.setdefault("mean_request_total", []).append(dec.request_total.ravel())
                if methods.squbed is not None:
                    ok = err.mean((2, 3, 4)).cpu() <= methods.squbed.config.tau
                    q = methods.squbed(total)
                    t.add_event("frame_le_tau", q, ok)
                    t.u_frame.append((1.0 - q).flatten().numpy())
                else:
                    t.u_frame.append(dec.total.ravel())
                continue
            t.u_frame.append(u.mean((2, 3, 4)).flatten().cpu().numpy())
            t.u_elem.append(u.flatten()[sample].cpu().numpy())
            t.err_elem.append(err.flatten()[sample].cpu().numpy())
    err_frame = np.concatenate(err_frames)
    out = {}
    for name in methods.names:
        t = tallies[name]
        if name == "squbed" and methods.squbed is None:  # no probability map: rank metrics only
            t.events = {}
            u = np.concatenate(t.u_frame)
            c = correlation(u, err_frame)
            above = err_frame > np.median(err_frame)
            out[name] = {
                "frame_kendall_tau": c["kendall_tau"],
                "frame_pearson_r": c["pearson_r"],
                "auroc_above_median": auroc(u[above], u[~above]),
                "mean_uncertainty": float(u.mean()),
            }
            continue
        out[name] = t.result(err_frame)
    return {
        "methods": out,
        "windows": int(len(idx)),
        "frames": int(len(err_frame)),
        "mean_abs_error": float(err_frame.mean()),
        "episodes": len(split.episodes),
    }


# ---------------------------------------------------------------------------------------------- cost
def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


@torch.no_grad()
def plan_costs(model: WorldModel, methods: Methods, split: SplitData, cfg: CompareConfig) -> dict:
    """Milliseconds each method adds to judging N proposals of one request (median of ``cost_repeats``), and the
    N-proposal rollout itself; on the model's device with the current thread count."""
    N = cfg.cost_proposals
    hist, act, fut = split.windows.gather(split.windows.spread(1), model.device)
    hist, act = hist.expand(N, *hist.shape[1:]), act.expand(N, *act.shape[1:])
    noise = torch.randn((1, *fut.shape[1:]), generator=torch.Generator().manual_seed(0)).expand(N, *fut.shape[1:])
    pred, feats, emb = rollout_with_features(model.flow_map, hist, act, methods.flow_steps, noise)
    out = {
        "proposals": N,
        "rollout_ms": _median_ms(
            lambda: model.flow_map.sample(hist, act, steps=methods.flow_steps, noise=noise), cfg.cost_repeats
        ),
        "threads": torch.get_num_threads(),
        "load_1min": os.getloadavg()[0],
    }
    sq_cfg = squbed_config(methods, cfg)
    for name in methods.names:
        if name == "bins":
            fn = lambda: ERROR_BINS.summaries(methods.uq(pred, hist), REFERENCE_EPS)  # noqa: E731
        elif name.startswith("c3-"):
            probe = methods.probes[name]
            fn = lambda p=probe: p.probabilities(feats, emb, (REFERENCE_EPS,))  # noqa: E731
        else:
            raw = model.normalizer.denormalize(act)
            fn = lambda r=raw: estimate(model, hist, r, sq_cfg)  # noqa: E731
        out[f"{name}_ms"] = _median_ms(fn, cfg.cost_repeats)
    return out


# ------------------------------------------------------------------------------------------ pictures
def reliability_figure(result: dict, path: Path) -> Path:
    """Every method's reliability diagram (one curve per event) in one figure: rows = splits, columns = methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(result["splits"])
    names = [n for n in result["methods"] if "events" in result["splits"][splits[0]]["methods"][n]]
    fig, axes = plt.subplots(
        len(splits), max(1, len(names)), figsize=(3.2 * max(1, len(names)), 3.2 * len(splits)), dpi=110, squeeze=False
    )
    for r, split in enumerate(splits):
        for c, name in enumerate(names):
            ax = axes[r][c]
            m = result["splits"][split]["methods"][name]
            ax.plot([0, 1], [0, 1], "k--", lw=0.8)
            for event, v in m["events"].items():
                conf, acc = np.array(v["table"]["confidence"], float), np.array(v["table"]["accuracy"], float)
                ok = ~np.isnan(conf)
                ax.plot(conf[ok], acc[ok], "o-", ms=2.5, lw=1, label=event.replace("p_le_", "eps "))
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(f"{split}: {name} (ECE {m['ece']:.3f})", fontsize=8)
            ax.tick_params(labelsize=7)
            if r == len(splits) - 1:
                ax.set_xlabel("predicted probability", fontsize=7)
            if c == 0:
                ax.set_ylabel("observed frequency", fontsize=7)
            ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


@torch.no_grad()
def heatmap_rows(
    model: WorldModel, methods: Methods, colormap: LatentColormap, split: SplitData, window: int, seed: int = 0
) -> np.ndarray:
    """One window: rows = truth, prediction, then each per-element method's uncertainty through the latent
    colour map over the prediction (bins: normalised entropy; C3: 1 - q at eps 0.5), then |error|."""
    idx = torch.tensor([window])
    hist, act, fut = split.windows.gather(idx, model.device)
    noise = torch.randn(fut.shape, generator=torch.Generator().manual_seed(seed)).to(model.device)
    pred, feats, emb = rollout_with_features(model.flow_map, hist, act, methods.flow_steps, noise)
    frames = (model.decode(pred)[0].movedim(-3, -1) * 255).round().byte().cpu().numpy()  # (H, V, h, w, 3)
    truth = _true_frames(split, split.windows.index["future"][idx])[0]
    rows = [truth, frames]
    if methods.uq is not None:
        rows.append(overlay(frames, colormap.render(ERROR_BINS.normalized_entropy(methods.uq(pred, hist))[0])))
    for probe in methods.probes.values():
        qs = probe.probabilities(feats, emb, (REFERENCE_EPS,))
        q = qs.get(REFERENCE_EPS, next(iter(qs.values())))
        rows.append(overlay(frames, colormap.render((1.0 - q)[0])))
    err = np.abs(frames.astype(np.int16) - truth.astype(np.int16)).mean(-1, keepdims=True)
    rows.append(np.repeat(np.clip(err * 4, 0, 255).astype(np.uint8), 3, -1))

    def strip(x):  # (H, V, h, w, 3) -> (h, H * V * w, 3), 2-pixel gaps
        pad = np.pad(x, ((0, 0), (0, 0), (0, 2), (0, 2), (0, 0)), constant_values=255)
        return np.concatenate([np.concatenate(list(f), 1) for f in pad], 1)

    return np.concatenate([strip(r) for r in rows], 0)


# ------------------------------------------------------------------------------------------- report
def run_compare(
    model: WorldModel,
    methods: Methods,
    splits: dict[str, Path],
    out: Path,
    cfg: CompareConfig = CompareConfig(),
    progress: bool = True,
    colormap: LatentColormap | None = None,
) -> dict:
    """Compare ``methods`` on every split (name -> dataset); writes the JSON, the table, the figure, heatmaps."""
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "config": {
            "windows": cfg.windows,
            "thresholds": list(cfg.thresholds),
            "n_bins": cfg.n_bins,
            "seed": cfg.seed,
            "flow_steps": methods.flow_steps,
            "squbed": asdict(squbed_config(methods, cfg)) if "squbed" in methods.names else None,
        },
        "methods": {n: {} for n in methods.names},
        "splits": {},
    }
    first = None
    for name, data in splits.items():
        split = split_data(model, data, progress)
        first = first or split
        r = compare_split(model, methods, split, cfg, progress)
        r["data"] = str(data)
        result["splits"][name] = r
        if colormap is not None and (methods.uq is not None or methods.probes):
            panel = heatmap_rows(model, methods, colormap, split, len(split.windows) // 2, cfg.seed)
            cv2.imwrite(str(out / f"uq_heatmaps_{name}.png"), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
    result["cost"] = plan_costs(model, methods, first, cfg)
    if "val" in result["splits"] and "ood" in result["splits"]:
        for n in methods.names:
            v = result["splits"]["val"]["methods"][n]["mean_uncertainty"]
            o = result["splits"]["ood"]["methods"][n]["mean_uncertainty"]
            result["methods"][n]["ood_val_ratio"] = float(o / v) if v else float("nan")
    for n in methods.names:
        result["methods"][n]["cost_ms"] = result["cost"][f"{n}_ms"]
    if any("events" in r["methods"][n] for r in result["splits"].values() for n in methods.names):
        reliability_figure(result, out / "reliability_all.png")
    table = format_table(result)
    (out / "uq_compare.md").write_text(table + "\n")
    (out / "uq_compare.json").write_text(json.dumps(result, indent=1))
    return result


def _f(v, fmt=".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)


def format_table(result: dict) -> str:
    """The comparison as one markdown table (a row per method and split)."""
    head = (
        "| method | split | events | ECE | MCE | Brier | τ frame | r frame | τ element | AUROC err > median "
        "| mean u | ood/val | ms / plan |"
    )
    rows = [head, "|" + " --- |" * 13]
    for name in result["methods"]:
        for split, r in result["splits"].items():
            m = r["methods"][name]
            events = ", ".join(e.replace("p_le_", "ε ") for e in m.get("events", {})) or "none (no map)"
            first = split == next(iter(result["splits"]))
            rows.append(
                f"| {name} | {split} | {events} | {_f(m.get('ece'))} | {_f(m.get('mce'))} | {_f(m.get('brier'))} "
                f"| {_f(m.get('frame_kendall_tau'))} | {_f(m.get('frame_pearson_r'))} "
                f"| {_f(m.get('element_kendall_tau'))} | {_f(m.get('auroc_above_median'))} "
                f"| {_f(m.get('mean_uncertainty'), '.4f')} "
                f"| {_f(result['methods'][name].get('ood_val_ratio')) if first else ''} "
                f"| {_f(result['methods'][name].get('cost_ms'), '.1f') if first else ''} |"
            )
    c = result["cost"]
    rows.append("")
    rows.append(
        f"ms / plan: what the method adds to judging {c['proposals']} proposals (the {c['proposals']}-proposal "
        f"rollout itself: {c['rollout_ms']:.1f} ms; {c['threads']} threads, load {c['load_1min']:.1f})."
    )
    return "\n".join(rows)
