"""The Hub model card of a MedPEFT adapter: front matter (base_model, library_name, tags, datasets,
model-index eval results), the description of :func:`adapters.io.model_card`, evaluation and training
details from the run's ``results.json``, and the citation; checked by parsing it back with
``huggingface_hub.ModelCard``.

    text = build_model_card(read_config(folder), results=RunResults.read(run).data)
"""
from __future__ import annotations

import math
from typing import Any

from adapters.io import PAPER_CITATION, AdapterConfig, model_card
from adapters.registry import get_method


class CardError(RuntimeError):
    """The generated model card is invalid (a MedPEFT bug)."""


def base_model_id(backbone: str, pretrained: bool = True) -> str | None:
    """The Hub model the adapter's base weights are, or None when there is none to name: random weights
    (``--no-pretrained``), or a timm name without a Hub pretrained config (e.g. the tiny test models). A
    Hub id stays; a timm name becomes its pretrained weights' repo (``resnet50`` -> ``timm/resnet50.a1_in1k``);
    the offline EfficientNet-Lite0 names the Hub repo of the same TF weights."""
    from adapters.backbones import OFFLINE_LITE0

    if not pretrained:
        return None
    from adapters.foundation import find_preset

    preset = find_preset(backbone)
    if preset is not None:  # a foundation preset: its Hub repo (None for a file such as MRM.pth)
        return preset.hub_id
    if "/" in backbone:
        return backbone.removeprefix("hf-hub:").removeprefix("hf_hub:")
    if backbone == OFFLINE_LITE0:  # the same TF EfficientNet-Lite0 ImageNet weights, ported by lukemelas
        return "timm/tf_efficientnet_lite0.in1k"
    try:
        import timm

        return timm.models.get_pretrained_cfg(backbone).hf_hub_id or None
    except Exception:  # no pretrained config (e.g. the tiny test backbones)
        return None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _eval_metrics(config: AdapterConfig, results: dict | None) -> list[tuple[str, float, str | None, str]]:
    """``(metric, value, split, pretty name)``: test means over seeds from ``results``, else the
    adapter config's own metrics (``test_f1_macro`` -> ``f1_macro`` on ``test``)."""
    out = []
    test = ((results or {}).get("metrics") or {}).get("test") or {}
    if test:
        for k, v in test.items():
            mean = v.get("mean") if isinstance(v, dict) else v
            if _finite(mean):
                n = len(v.get("values") or []) if isinstance(v, dict) else 0
                std = v.get("std") if isinstance(v, dict) else None
                name = f"test {k}" + (f" (mean of {n} seeds, std {std:.4f})" if n > 1 and _finite(std) else "")
                out.append((k, float(mean), "test", name))
        return out
    for k, v in config.metrics.items():
        if _finite(v):
            split, _, metric = k.partition("_") if k.startswith(("test_", "val_")) else (None, "", k)
            out.append((metric, float(v), split, f"{split} {metric}" if split else metric))
    return out


def _assessment_evals(config: AdapterConfig, results: dict | None) -> list[tuple[str, float, str | None, str]]:
    """model-index entries beyond the headline: the test score per subgroup (mean over seeds from
    ``results``, else these weights'), the ECE before / after temperature scaling, the test interval."""
    out = []
    fairness = ((results or {}).get("fairness") or {}).get("test")
    if fairness:
        key = fairness["headline"]
        for attr, a in fairness["attributes"].items():
            for value, g in a["groups"].items():
                score = (g.get("score") or {}).get("mean") if g.get("scored") else None
                if _finite(score):
                    out.append((key, float(score), "test", f"test {key}, {attr} = {value} ({g['n']} images)"))
    elif config.calibration.get("subgroups"):
        key = config.calibration.get("subgroup_metric", "score")
        for attr, a in config.calibration["subgroups"].items():
            for value, g in a["groups"].items():
                if _finite(g.get("score")):
                    out.append((key, float(g["score"]), "test", f"test {key}, {attr} = {value} ({g['n']} images)"))
    cal = config.calibration.get("test") or {}
    for when in ("before", "after"):
        ece = (cal.get(when) or {}).get("ece")
        if _finite(ece):
            what = "raw" if when == "before" else "temperature-scaled"
            out.append(("ece", float(ece), "test", f"test expected calibration error (15 bins, {what})"))
    interval = config.calibration.get("test_interval") or {}
    for end in ("low", "high"):
        if _finite(interval.get(end)):
            out.append((f"{interval['metric']}_ci95_{end}", float(interval[end]), "test",
                        f"test {interval['metric']} bootstrap 95% interval, {end} end ({interval['n_resamples']} "
                        f"resamples by {interval['resampled_by']})"))
    return out


def _assessment_lines(config: AdapterConfig) -> list[str]:
    """The card's Calibration and Subgroups section, for these weights (config.calibration)."""
    c = config.calibration
    if not c or config.temperature is None:
        return []
    t = config.temperature
    t_text = f"{t:.3f}" if isinstance(t, (int, float)) else ", ".join(f"{v:.3f}" for v in t)
    b, a = (c.get("test") or {}).get("before") or {}, (c.get("test") or {}).get("after") or {}
    lines = ["## Calibration and subgroups", "",
             f"Temperature scaling fitted on the validation split: T = {t_text} (`temperature` in medpeft.json; "
             "`load_adapter` and the MedPEFT app apply it, so their probabilities are calibrated).", "",
             "| test split | ECE (15 bins) | Brier | NLL |", "| --- | --- | --- | --- |"]
    for name, m in (("raw", b), ("temperature-scaled", a)):
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" if _finite(m.get(k)) else "n/a"
                                                 for k in ("ece", "brier", "nll")) + " |")
    interval = c.get("test_interval") or {}
    if _finite(interval.get("low")):
        lines += ["", f"Test {interval['metric']} {interval['estimate']:.4f}, bootstrap 95% interval "
                      f"{interval['low']:.4f} to {interval['high']:.4f} ({interval['n_resamples']} resamples by "
                      f"{'patient / lesion' if interval['resampled_by'] == 'group' else 'image'})."]
    for attr, s in (c.get("subgroups") or {}).items():
        lines += ["", f"Test {c.get('subgroup_metric', 'score')} by {attr} (worst: {s['worst_group'] or 'n/a'}"
                      + (f", gap {s['gap']:.4f}" if _finite(s.get("gap")) else "") + "):", "",
                  "| group | images | score |", "| --- | --- | --- |"]
        lines += [f"| {v} | {g['n']} | {g['score']:.4f} |" if _finite(g.get("score")) else
                  f"| {v} | {g['n']} | too few images to score |" for v, g in s["groups"].items()]
    return lines + [""]


def _training_lines(config: AdapterConfig, results: dict | None) -> list[str]:
    r = results or {}
    tr = config.trainable_params if config.trainable_params is not None else r.get("trainable_params")
    tot = config.total_params if config.total_params is not None else r.get("total_params")
    lines = []
    if tr is not None:
        pct = f" of {tot:,} ({100 * tr / tot:.3f}%)" if tot else ""
        lines.append(f"- trainable parameters: {tr:,}{pct}")
    seed = config.training.get("seed")
    seeds = r.get("seeds") or [p.get("seed") for p in r.get("per_seed") or [] if "seed" in p]
    if seeds:
        lines.append(f"- seeds: {', '.join(map(str, seeds))}" + (f"; these weights: seed {seed}" if seed is not None
                                                                  else ""))
    elif seed is not None:
        lines.append(f"- seed: {seed}")
    sizes = r.get("split_sizes") or {}
    if not sizes and r.get("per_seed"):
        sizes = r["per_seed"][0].get("split_sizes") or {}
    fraction = r.get("fraction", config.training.get("fraction"))
    if sizes:
        lines.append("- split: " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + " images"
                     + (f" (training fraction {fraction})" if fraction is not None else ""))
    elif config.training.get("n_train") is not None:
        lines.append(f"- training images: {config.training['n_train']}"
                     + (f" (training fraction {fraction})" if fraction is not None else ""))
    per_seed = [p for p in r.get("per_seed") or [] if isinstance(p.get("test"), dict)]
    if per_seed:
        key = per_seed[0]["test"].get("headline")
        if key and all(_finite(p["test"].get(key)) for p in per_seed):
            lines.append(f"- test {key} per seed: " + ", ".join(f"seed {p.get('seed')}: {p['test'][key]:.4f}"
                                                                 for p in per_seed))
    mine = next((p for p in per_seed if p.get("seed") == seed), per_seed[0] if per_seed else None)
    per_class = (mine or {}).get("test", {}).get("auroc_per_class") or {}
    if per_class and (mine or {}).get("test", {}).get("headline") == "auroc":  # multi-label: AUROC per label
        lines.append(f"- test AUROC per class (seed {mine.get('seed')}; undefined: no positives or no negatives, "
                     "left out of the mean): " + ", ".join(f"{c} {v:.4f}" if _finite(v) else f"{c} undefined"
                                                         for c, v in per_class.items()))
    return lines


def build_model_card(config: AdapterConfig, results: dict | None = None, existing: str | None = None) -> str:
    """The Hub model card of an adapter: front matter (base_model, library_name, tags, datasets,
    model-index eval results) + the description of :func:`adapters.io.model_card` + evaluation and
    training details + the citation. Metadata keys of ``existing`` (a previous README) that MedPEFT
    does not set, e.g. ``license``, are kept. Parsed back with ``huggingface_hub.ModelCard`` to check it."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    method = get_method(config.method)
    dataset = config.dataset or (results or {}).get("dataset")
    task_type = "text-to-image" if config.task == "generation" else "image-classification"
    tags = ["medpeft", "medical-imaging", config.method] + ([dataset] if dataset else [])
    if method.peft:
        tags.append("peft")
    tags += [t for t in discovery_tags(config, results, dataset) if t not in tags]
    evals = [EvalResult(task_type=task_type, dataset_type=dataset or "custom", dataset_name=dataset or "custom",
                        dataset_split=split, metric_type=metric, metric_value=round(value, 6), metric_name=name)
             for metric, value, split, name in _eval_metrics(config, results) + _assessment_evals(config, results)
             + _discovery_evals(config, results)]
    n_headline = len(_eval_metrics(config, results))  # the rest: subgroups, ECE, interval (own section)
    kept: dict[str, Any] = {}
    if existing:
        try:
            kept = ModelCard(existing, ignore_metadata_errors=True).data.to_dict()
        except Exception:  # an unreadable old card is simply replaced
            kept = {}
    ours = {"base_model", "library_name", "tags", "datasets", "model-index", "model_name", "eval_results",
            "pipeline_tag"}
    extra_tags = [t for t in kept.get("tags") or [] if isinstance(t, str) and t not in tags]
    data = ModelCardData(
        base_model=base_model_id(config.backbone, config.pretrained), library_name="peft" if method.peft else "timm",
        tags=tags + extra_tags, datasets=[dataset] if dataset else None, pipeline_tag=task_type,
        model_name=f"medpeft-{config.method}-{config.backbone}" + (f"-{dataset}" if dataset else ""),
        eval_results=evals or None, **{k: v for k, v in kept.items() if k not in ours})

    body = model_card(config).split("\n---\n", 1)[1]  # adapters.io's description, without its front matter
    extra = []
    if evals:
        body = _drop_metric_table(body)  # replaced by the Evaluation section
        test = ((results or {}).get("metrics") or {}).get("test") or {}
        extra += ["## Evaluation", "", "| metric | split | value |", "| --- | --- | --- |"]
        for e in evals[:n_headline]:
            v = test.get(e.metric_type)
            spread = (f" ± {v['std']:.4f} ({len(v['values'])} seeds)" if isinstance(v, dict) and _finite(v.get("std"))
                      and len(v.get("values") or []) > 1 else "")
            extra.append(f"| {e.metric_type} | {e.dataset_split or ''} | {e.metric_value:.4f}{spread} |")
        if test:
            extra += ["", "Test-set mean (± sample std) over the training seeds, from the run's `results.json`."]
            own = {k: v for k, v in config.metrics.items() if _finite(v)}
            if own:
                seed = config.training.get("seed")
                extra += ["These weights" + (f" (seed {seed})" if seed is not None else "") + ": "
                          + ", ".join(f"{k} {v:.4f}" for k, v in own.items()) + "."]
        extra.append("")
    if data.base_model is None and config.task != "generation":
        why = ("the backbone was trained from random weights (--no-pretrained)" if not config.pretrained
               else f"{config.backbone} has no pretrained weights on the Hub")
        extra += [f"No `base_model` is named: {why}.", ""]
    extra += _assessment_lines(config)
    training = _training_lines(config, results)
    if training:
        extra += ["## Training", ""] + training + [""]
    if extra:
        marker = "## Use\n"
        body = body.replace(marker, "\n".join(extra) + "\n" + marker, 1) if marker in body \
            else body + "\n" + "\n".join(extra)
    if PAPER_CITATION not in body:
        body += f"\n## Citation\n\n```bibtex\n{PAPER_CITATION}\n```\n"
    text = f"---\n{data.to_yaml()}\n---\n{body}"
    _check_card(text, config, len(evals))
    return text


# ------------------------------------------------------------------------------ Hub discovery
DISCOVERY_FIELDS = ("method", "dataset", "task", "backbone", "headline")
"""``medpeft-<field>:<value>`` tags: what the app's Hub search filters by (``HfApi.list_models(filter=...)``)."""


def discovery_tag(field: str, value: str) -> str:
    return f"medpeft-{field}:{value}"


def _headline_key(config: AdapterConfig, results: dict | None) -> str | None:
    for p in (results or {}).get("per_seed") or []:
        if isinstance(p.get("test"), dict) and p["test"].get("headline"):
            return str(p["test"]["headline"])
    keys = [m for m, _, _, _ in _eval_metrics(config, results)]
    for k in ("auroc", "f1_macro") if config.task == "multilabel" else ("f1_macro", "auroc", "accuracy"):
        if k in keys:
            return k
    return keys[0] if keys else None


def discovery_tags(config: AdapterConfig, results: dict | None = None, dataset: str | None = None) -> list[str]:
    """Every repo's search tags: ``medpeft``, the method, the dataset, the task and the base model's id (the
    backbone's name where no Hub model is), plain and as ``medpeft-<field>:<value>`` (unambiguous filters)."""
    dataset = dataset or config.dataset or (results or {}).get("dataset")
    base = base_model_id(config.backbone, config.pretrained) or config.backbone
    fields = {"method": config.method, "dataset": dataset, "task": config.task, "backbone": config.backbone,
              "headline": _headline_key(config, results)}
    plain = ["medpeft", config.method, dataset, config.task, base]
    return list(dict.fromkeys([t for t in plain if t] + [discovery_tag(k, v) for k, v in fields.items() if v]))


def _discovery_evals(config: AdapterConfig, results: dict | None) -> list[tuple[str, float, str | None, str]]:
    """model-index entries the Hub listing shows before download, beyond the headline and ECE: the worst
    subgroup's test score and the trainable parameter count."""
    out = []
    fairness = ((results or {}).get("fairness") or {}).get("test") or {}
    worst = (fairness.get("worst_group_score") or {}).get("mean") if fairness else None
    if not _finite(worst) and config.calibration.get("subgroups"):
        scores = [g.get("score") for a in config.calibration["subgroups"].values() for g in a["groups"].values()]
        worst = min((v for v in scores if _finite(v)), default=None)
    if _finite(worst):
        out.append(("worst_group", float(worst), "test", "test worst-subgroup score"))
    if config.trainable_params:
        out.append(("trainable_params", float(config.trainable_params), None, "trainable parameters"))
    return out


def discovery_summary(tags: list[str] | None, eval_results: list | None) -> dict[str, Any]:
    """What a Hub listing shows of a repo before download, from its tags and its card's model-index
    (``huggingface_hub`` ``EvalResult`` objects): method, dataset, task, backbone, headline metric and value,
    worst-group score, ECE (temperature-scaled where fitted), trainable parameters."""
    out: dict[str, Any] = {k: None for k in DISCOVERY_FIELDS}
    for t in tags or []:
        for k in DISCOVERY_FIELDS:
            if isinstance(t, str) and t.startswith(f"medpeft-{k}:"):
                out[k] = t.split(":", 1)[1]
    out.update(headline_value=None, worst_group=None, ece=None, trainable_params=None)
    for e in eval_results or []:
        kind, value, name = e.metric_type, e.metric_value, e.metric_name or ""
        if kind == out["headline"] and out["headline_value"] is None and "=" not in name:
            out["headline_value"] = value
        elif kind == "worst_group":
            out["worst_group"] = value
        elif kind == "ece" and (out["ece"] is None or "temperature-scaled" in name):
            out["ece"] = value
        elif kind == "trainable_params":
            out["trainable_params"] = int(value)
    return out


def _drop_metric_table(body: str) -> str:
    lines, out, skipping = body.split("\n"), [], False
    for line in lines:
        if line.strip() == "| metric | value |":
            skipping = True
            if out and not out[-1].strip():
                out.pop()
            continue
        if skipping and line.startswith("|"):
            continue
        skipping = False
        out.append(line)
    return "\n".join(out)


def _check_card(text: str, config: AdapterConfig, n_evals: int) -> None:
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text)  # parses the YAML and the model-index (raises on invalid metadata)
    except Exception as e:
        raise CardError(f"the generated model card is invalid ({e}); this is a MedPEFT bug") from e
    d = card.data
    problems = [name for name, ok in [
        ("base_model", bool(d.base_model) == bool(base_model_id(config.backbone, config.pretrained))),
        ("library_name", d.library_name in ("peft", "timm")),
        ("method tag", config.method in (d.tags or [])),
        ("eval results", len(d.eval_results or []) == n_evals), ("citation", PAPER_CITATION in card.text)] if not ok]
    if problems:
        raise CardError(f"the generated model card lacks {', '.join(problems)}; this is a MedPEFT bug")
