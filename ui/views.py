"""What the tabs show, built from plain values: the theme and CSS, the Train tab's status panel,
training curves and confusion matrix (matplotlib figures), the finished run's Markdown, and the
adapter choices and status line shared by the tabs."""
from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from trainer.infer import AdapterList
from trainer.loops.fairness import worst_group_text
from trainer.jobs.progress import metric_label, pct
from trainer.study.results import format_params

DISCLAIMER = "Research use only: not a medical device, not for diagnosis."
NO_ADAPTER = "(none: base pipeline only)"

CSS = """
.medpeft-header h1 {margin-bottom: 0.1em;}
.medpeft-header p {margin-top: 0; color: var(--body-text-color-subdued);}
.medpeft-note {font-size: 0.9em; color: var(--body-text-color-subdued);}
.medpeft-train-status {padding: 0.7em 0.9em; border-radius: var(--radius-lg);
  border: 1px solid var(--border-color-primary); background: var(--block-background-fill);}
.medpeft-train-status .medpeft-phase {font-weight: 600; margin-bottom: 0.15em;}
.medpeft-train-status .medpeft-detail {font-size: 0.9em; color: var(--body-text-color-subdued);}
.medpeft-train-status progress {-webkit-appearance: none; appearance: none; width: 100%; height: 10px;
  margin: 0.45em 0 0.25em; border: none; border-radius: 5px; overflow: hidden; background: var(--neutral-200, #e5e7eb);}
.medpeft-train-status progress::-webkit-progress-bar {background: var(--neutral-200, #e5e7eb); border-radius: 5px;}
.medpeft-train-status progress::-webkit-progress-value {background: var(--primary-500, #14b8a6); border-radius: 5px;
  transition: width 0.3s;}
.medpeft-train-status progress::-moz-progress-bar {background: var(--primary-500, #14b8a6); border-radius: 5px;}
.medpeft-train-status.medpeft-error {border-color: var(--error-border-color, #ef4444);}
.medpeft-train-status.medpeft-error .medpeft-phase {color: var(--error-text-color, #b91c1c);}
"""



def theme() -> gr.themes.Base:
    # System fonts only: nothing is fetched from a font CDN (the app must work offline).
    return gr.themes.Soft(primary_hue="teal", secondary_hue="slate",
                          font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial",
                                "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"])



def train_status_html(phase: str, detail: str = "", fraction: float | None = None, error: bool = False) -> str:
    """The Train tab's status: a phase line, a detail line and a progress bar."""
    bar = "" if fraction is None else (f'<progress max="1000" value="{int(1000 * min(1.0, max(0.0, fraction)))}">'
                                      f"{100 * fraction:.0f}%</progress>")
    return (f'<div class="medpeft-train-status{" medpeft-error" if error else ""}">'
            f'<div class="medpeft-phase">{html.escape(phase)}</div>{bar}'
            f'<div class="medpeft-detail">{html.escape(detail)}</div></div>')



def training_curve_figure(series: dict[str, list[dict]], metric: str = "f1_macro", epochs: int | None = None):
    """Validation headline metric (%) and training loss per epoch; one line per run (HPO trials, final)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=100, layout="constrained")
    fig.get_layout_engine().set(rect=(0, 0, 0.99, 0.86))  # the top stays free for gradio's label badge
    ax_val, ax_loss = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    label = {"f1_macro": "macro-F1", "auroc": "AUROC"}.get(metric, metric)
    for i, (name, points) in enumerate(series.items()):
        if not points:
            continue
        x = [p["epoch"] for p in points]
        style = dict(marker="o", markersize=4, color=f"C{i % 10}", label=name,
                     linewidth=2.2 if name in ("training", "final run") else 1.3)
        ax_val.plot(x, [100 * p["val"] for p in points], **style)
        ax_loss.plot(x, [p["loss"] for p in points], **style)
    ax_val.set(title=f"Validation {label}", xlabel="epoch", ylabel=f"{label} (%)", ylim=(-2, 102))
    ax_loss.set(title="Training loss", xlabel="epoch", ylabel="loss")
    last = max([epochs or 1] + [p["epoch"] for points in series.values() for p in points])
    for ax in (ax_val, ax_loss):
        ax.grid(alpha=0.3)
        ax.set_xlim(0.7, max(2, last) + 0.3)  # the planned epochs: the curve fills in as it trains
        ax.xaxis.get_major_locator().set_params(integer=True)
    if len(series) > 1:
        ax_val.legend(fontsize=8, loc="best")
    return fig



def confusion_figure(matrix: list[list[int]], class_names: list[str]):
    """Test confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    import numpy as np
    from matplotlib.figure import Figure

    cm = np.asarray(matrix, dtype=float)
    k = len(class_names)
    side = min(9.0, max(3.6, 0.5 * k + 2.2))
    fig = Figure(figsize=(max(8.0, side + 1.6), side + 0.5), dpi=100, layout="constrained")
    fig.get_layout_engine().set(rect=(0, 0, 1, 0.9))  # the top stays free for gradio's label badge
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cm, cmap="Blues", vmin=0)
    from matplotlib.ticker import MaxNLocator

    fig.colorbar(im, ax=ax, shrink=0.8, label="images", ticks=MaxNLocator(integer=True))
    ax.set_xticks(range(k), class_names, rotation=45 if k > 3 or max(map(len, class_names)) > 8 else 0,
                  ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), class_names)
    ax.set(xlabel="predicted class", ylabel="true class")
    if k <= 20:
        high = cm.max() / 2 if cm.size and cm.max() > 0 else 0.5
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=10 if k <= 10 else 7,
                        color="white" if cm[i, j] > high else "black")
    return fig



def train_result_markdown(results: dict, seed_result: dict, key: str | None, adapter_folder: Path,
                          adapters_dir: Path) -> str:
    """Test metrics of a finished Train-tab run, where its adapter went, and what was trained."""
    test = seed_result["test"]
    lines = ["### Test results", "Held-out test split, best-validation checkpoint "
             f"(epoch {seed_result.get('best_epoch')} of {seed_result.get('epochs_run')} run).", ""]
    cols = [(k, label) for k, label in (("f1_macro", "macro-F1"), ("accuracy", "accuracy"),
                                         ("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC"))
            if k in test]
    lines += ["| " + " | ".join(label for _, label in cols) + " |", "|" + "---:|" * len(cols),
              "| " + " | ".join(f"**{pct(test[k])}**" if k == "f1_macro" else pct(test[k]) for k, _ in cols) + " |"]
    multilabel = test.get("headline") == "auroc"
    per_class = test.get("auroc_per_class") if multilabel else test.get("per_class_f1")
    if per_class:
        lines += ["", f"Per-class {'AUROC' if multilabel else 'F1'}: "
                  + ", ".join(f"{c} {pct(v) if v is not None else 'undefined'}" for c, v in per_class.items())]
    lines += assessment_markdown(seed_result.get("assessment") or {})
    sizes = results.get("split_sizes") or {}
    tp, total = results.get("trainable_params"), results.get("total_params")
    lines += ["", f"**{results['method']}** on `{results['backbone']}`"
              + (f": {format_params(tp)} of {format_params(total)} parameters trained ({100 * tp / total:.2f}%)"
                 if tp and total else "")
              + (f" · {sizes.get('train')}/{sizes.get('val')}/{sizes.get('test')} train/val/test images"
                 if sizes else "")
              + f" · {float(results.get('wall_time_s') or 0):.0f} s"]
    hpo = results.get("quick_hpo")
    if hpo:
        b = hpo["best"]
        lines += [f"Quick HPO: {len(hpo['trials'])} trial(s) of {hpo['trial_epochs']} epoch(s); best lr "
                  f"{b['lr']:.2g}, weight decay {b['weight_decay']:.2g} (val {pct(b['val'])})."]
    try:
        where = adapter_folder.relative_to(adapters_dir.resolve())
        where = f"{adapters_dir}/{where.as_posix()}"
    except ValueError:
        where = str(adapter_folder)
    lines += ["", f"Adapter saved to `{where}`" + (f" and selected on the **Classify** tab (`{key}`)." if key
                                                   else ".")]
    if results.get("stopped_early_by_user"):
        lines += ["", "**Stopped by you:** the best validation checkpoint so far was tested and saved."]
    return "\n".join(lines)


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def assessment_markdown(assessment: dict) -> list[str]:
    """Markdown lines: the test interval, calibration before/after temperature scaling, and a per-group
    table for every subgroup attribute (test split) of one seed's assessment (trainer.loops.assess)."""
    lines = []
    interval = assessment.get("test_interval")
    if interval and interval.get("low") == interval.get("low"):
        lines += ["", f"Bootstrap 95% interval of the test {metric_label(interval['metric'])}: "
                      f"{pct(interval['low'])} to {pct(interval['high'])} ({interval['n_resamples']} resamples by "
                      f"{'patient/lesion' if interval['resampled_by'] == 'group' else 'image'})."]
    cal = assessment.get("calibration")
    if cal:
        b, a = cal["test"]["before"], cal["test"]["after"]
        t = cal["temperature"]
        t_text = f"{t:.2f}" if isinstance(t, (int, float)) else f"{min(t):.2f} to {max(t):.2f} (per label)"
        lines += ["", f"**Calibration** (test split; temperature T = {t_text} fitted on validation):", "",
                  "| | ECE | Brier | NLL |", "|---|---:|---:|---:|",
                  f"| raw | {_num(b['ece'])} | {_num(b['brier'])} | {_num(b['nll'])} |",
                  f"| calibrated | {_num(a['ece'])} | {_num(a['brier'])} | {_num(a['nll'])} |"]
    test = (assessment.get("subgroups") or {}).get("test")
    for attr, entry in ((test or {}).get("attributes") or {}).items():
        lines += ["", f"**Subgroups by {attr}** (test split, {metric_label(test['headline'])}; "
                      f"{worst_group_text(entry, pct)}, equalized-odds difference "
                      f"{_num(entry['equalized_odds_difference'])}):", "",
                  "| group | images | score | accuracy |", "|---|---:|---:|---:|"]
        for value, g in entry["groups"].items():
            score = pct(g["score"]) if g["scored"] else f"too small (< {test['min_group_size']})"
            lines.append(f"| {value} | {g['n']} | {score} | {pct(g['accuracy']) if g['scored'] else ''} |")
    return lines


def calibration_text(config) -> str:
    """The Classify tab's line for an adapter whose probabilities are temperature-scaled."""
    t = config.temperature
    t_text = f"T = {t:.2f}" if isinstance(t, (int, float)) else f"one T per label, {min(t):.2f} to {max(t):.2f}"
    ece = ((config.calibration or {}).get("test") or {})
    before, after = (ece.get("before") or {}).get("ece"), (ece.get("after") or {}).get("ece")
    extra = f"; test ECE {_num(before)} raw, {_num(after)} calibrated" if before is not None else ""
    return f"probabilities **calibrated** by temperature scaling ({t_text}, fitted on the validation split{extra})"


def choices(adapters) -> list[tuple[str, str]]:
    """(label, key) dropdown choices for adapters."""
    return [(a.label(), a.key) for a in adapters]


def generator_choices(adapters) -> list[tuple[str, str]]:
    return [(NO_ADAPTER, "")] + choices(adapters)


def adapter_status(adapters: AdapterList, adapters_dir: Path, with_hub: bool) -> str:
    """The Classify tab's line under the buttons: what was found where, and any messages."""
    n_cls = sum(a.task != "generation" for a in adapters)
    n_gen = len(adapters) - n_cls
    text = f"{n_cls} classification and {n_gen} generation adapter(s) from `{adapters_dir}`"
    if with_hub:
        text += " and the Hub"
    if adapters.messages:
        text += "\n\n" + "\n".join(f"- {m}" for m in adapters.messages)
    return text


def nearest_training_markdown(result: dict) -> str:
    """The Generate tab's line under the nearest training image (trainer.geneval.nearest)."""
    if not result.get("available"):
        return f"Nearest training image: not available. {result.get('reason', '')}".strip()
    verdict = ""
    if result.get("flagged") is not None:
        verdict = (" **Flagged as a near-copy** (below the run's calibrated threshold "
                   f"{result['threshold']:.3f})." if result["flagged"] else
                   f" Not a near-copy (the run's calibrated threshold is {result['threshold']:.3f}).")
    missing = result["n_listed"] - result["n_train"]
    note = f" ({missing} listed training images are not on this machine.)" if missing else ""
    return (f"Nearest of {result['n_train']:,} training images: `{Path(result['path']).name}`, pixel distance "
            f"{result['distance']:.3f} (1 - aligned correlation), relative distance {result['relative']:.3f} "
            f"(to the next nearest).{verdict}{note}")
