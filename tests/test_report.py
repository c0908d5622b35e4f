"""The SampleWriter's report: metrics.json and TensorBoard (HParams with metrics, acceptance per level, picture)."""

from __future__ import annotations

import json

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks.sample_writer import SampleWriter
from lit_mcmc.data.indices import SampleIndexDataModule
from lit_mcmc.report import read_hparams_sessions
from lit_mcmc.run_report import run_report
from lit_mcmc.samplers import SamplerConfig


class FakeSampler(LightningModule):
    """predict_step returns the record a SamplingModule returns, for 2D points."""

    def __init__(self) -> None:
        super().__init__()
        self.sampler_config = SamplerConfig(kernel="hmc", step_size=0.03, correction="curve", n_steps=2)

    def predict_step(self, batch, batch_idx):
        n = len(batch)
        return {"indices": batch, "samples": torch.randn(n, 2, generator=torch.Generator().manual_seed(batch_idx)),
                "accept_rate": torch.full((n,), 0.75, dtype=torch.float64), "nfe": 7, "adjusted": True,
                "levels": {"accept_rate": {0: 0.9, 1: 0.6}}, "n_nonfinite": 0, "seconds": 0.5}


def test_hparams_metrics_curves_and_picture_reach_tensorboard(tmp_path):
    class Quality(Callback):  # reports a quality metric through the run's report, as metric callbacks do
        def on_predict_end(self, trainer, pl_module):
            run_report(trainer).add_metrics({"w2": 0.25})

    logger = TensorBoardLogger(str(tmp_path), name="tb", version="v")
    # the metric callback first: the order of callbacks does not matter
    trainer = Trainer(accelerator="cpu", logger=logger, callbacks=[Quality(), SampleWriter(str(tmp_path))],
                      enable_progress_bar=False, inference_mode=False)
    trainer.predict(FakeSampler(), datamodule=SampleIndexDataModule(n_samples=20, batch_size=8,
                                                                    output_dir=str(tmp_path)),
                    return_predictions=False)

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["w2"] == 0.25 and metrics["nfe_per_sample"] == 7 and metrics["accept_rate"] == 0.75

    acc = EventAccumulator(str(tmp_path / "tb" / "v"), size_guidance={"tensors": 0, "images": 0, "scalars": 0})
    acc.Reload()
    (session,) = read_hparams_sessions(tmp_path / "tb" / "v")
    assert session.hparams["sampler"] == "HMC-curve" and session.hparams["step_size"] == 0.03
    assert session.hparams["n_samples"] == 20 and "n_leapfrog" in session.hparams
    # 2D samples: the 2D quality metrics are declared (columns) even where a run lacks one, then the sampler's
    assert session.metric_tags[:5] == ["metrics/ll", "metrics/w2", "metrics/gmm", "metrics/accept_rate",
                                       "metrics/nfe_per_sample"]
    assert "metrics/n_nonfinite_log_ratios" in session.metric_tags
    assert [e.value for e in acc.Scalars("metrics/w2")] == [0.25]
    curve = {e.step: round(e.value, 6) for e in acc.Scalars("sampler/accept_rate_per_level")}
    assert curve == {0: 0.9, 1: 0.6}
    assert "samples" in acc.Tags()["images"]  # the scatter plot of the samples


def test_eta_and_step_scaling_are_shown_only_away_from_what_runs_did_before_them():
    from types import SimpleNamespace

    from lit_mcmc.report import sampler_hparams

    product = SimpleNamespace(kind="product", scale=None, mh_scale=None)

    def shown(**changes):
        sampler = SamplerConfig(kernel="hmc", step_size=0.1, correction="energy", reverse=True,
                                reverse_variance="posterior", **changes)
        return sampler_hparams(sampler, product, {}, levels=10, seed=0, precision="fp32")

    assert "reverse_eta" not in shown() and "step_scaling" not in shown()
    assert shown(reverse_eta=0.0)["reverse_eta"] == 0.0 and shown(step_scaling="path")["step_scaling"] == "path"
