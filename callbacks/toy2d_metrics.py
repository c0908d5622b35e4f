"""Scores 2D samples at the end of ``predict``: LL, W2 and the GMM metric against exact target samples."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import matplotlib
import numpy as np

from lit_mcmc.data.toy2d import DISTRIBUTIONS, sample_distribution, seeded_generator
from lit_mcmc.metrics.toy2d import REFERENCE_SEED, sample_metrics, sample_metrics_uncertainty
from lit_mcmc.run_report import estimable, particle_groups, required_report

matplotlib.use("Agg")


class Toy2DMetrics(L.Callback):
    """Compares the merged samples with as many exact samples of ``distribution`` (drawn with ``seed``).

    Needs a ``SampleWriter`` (anywhere in the callback list), which merges the samples and publishes the metrics
    (metrics.json, TensorBoard HParams). LL (under the paper's extended product density) is reported for the
    product only; W2 and the GMM metric for any distribution. ``paper_compat`` reproduces the reference code's
    metric bugs (docs/algorithms.md §11) for comparison with the paper's table. Each metric comes with its
    bootstrap standard error and 95 % interval over the samples (``<metric>_se``, ``_low``, ``_high``; ``n_boot``
    replicates, about 0.15 s each at 1000 samples; 0 turns it off). Also writes ``samples.png`` (samples over the
    exact ones) next to the samples.
    """

    def __init__(self, distribution: str = "product", seed: int = REFERENCE_SEED, paper_compat: bool = False,
                 plot: bool = True, n_boot: int = 100) -> None:
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"Toy2DMetrics.distribution={distribution!r} is not one of {list(DISTRIBUTIONS)}")
        if n_boot < 0 or n_boot == 1:
            raise ValueError(f"Toy2DMetrics.n_boot={n_boot} must be 0 (no standard errors) or at least 2")
        self.distribution = distribution
        self.seed = seed
        self.paper_compat = paper_compat
        self.plot = plot
        self.n_boot = n_boot
        self.metrics: dict[str, float] = {}

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        report = required_report(trainer, "Toy2DMetrics")
        if not trainer.is_global_zero:
            return
        merged = report.merged_samples("Toy2DMetrics")
        samples = merged["samples"]
        if len(samples) < 10:
            raise ValueError(f"Toy2DMetrics needs at least 10 samples to fit its 2-component GMMs, got {len(samples)}: "
                             "raise data.n_samples or drop the metrics callback")
        reference = sample_distribution(self.distribution, len(samples), seeded_generator(self.seed)).numpy()
        self.metrics = self.evaluate(samples, reference, particle_groups(merged, pl_module))
        report.add_metrics(self.metrics)
        if self.plot:
            title = merged["stats"].get("sampler") or "samples"
            self._plot(samples, reference, report.output_dir / "samples.png", title)

    def evaluate(self, samples: np.ndarray, reference: np.ndarray,
                 groups: np.ndarray | None = None) -> dict[str, float]:
        """The metrics of ``samples`` against the exact ``reference``; the bootstrap resamples whole ``groups`` (the
        particle groups of a run with resampling) when given."""
        if self.n_boot == 0 or not estimable(groups):  # one particle group: no spread to resample
            return sample_metrics(samples, reference, self.distribution, self.paper_compat)
        return sample_metrics_uncertainty(samples, reference, self.distribution, self.paper_compat, self.n_boot,
                                          groups=groups)

    @staticmethod
    def _plot(samples: np.ndarray, reference: np.ndarray, path: Path, title: str) -> None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(reference[:, 0], reference[:, 1], s=2, alpha=0.3, c="tab:gray", label="exact")
        ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5, c="tab:blue", label=title)
        ax.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), aspect="equal", title=title)
        ax.legend(loc="upper right", markerscale=4, fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
