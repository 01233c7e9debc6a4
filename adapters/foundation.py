"""Medical foundation models by one short name: the table of presets.

``create_backbone("rad-dino", num_classes=0)`` returns the authors' embedding of RAD-DINO as a timm
``VisionTransformer``; every ViT method of the catalogue then applies unchanged. Each row of
:data:`PRESETS` says where the weights live (a Hub repo, or a file to pass with ``--init-checkpoint``),
in which format (``transformers``, ``open_clip``, ``timm``, ``mae``), what the repo's own config lacks
(the authors' timm arguments, e.g. UNI's ``init_values=1e-5``), the native input size and normalisation
(as in the repo's preprocessing config), the pooling its authors use, and its licence and gating.

``config`` is the architecture in the repo's own config format (``config.json`` for transformers,
``open_clip_config.json``'s ``model_cfg``, timm's ``architecture`` + ``model_args``). It builds the model
when no copy of the repo is at hand (random weights: ``--no-pretrained``, ``python -m adapters list``);
with a download or a local copy, the repo's own config is read instead, so a larger or smaller model of
the same family loads the same way. ``timm_args`` are the authors' arguments the config does not carry;
the repo's config wins where both give a value.

Pooling (the embedding, i.e. the model's output with ``num_classes=0``):
``token`` class token after the final norm (transformers' Dinov2 ``pooler_output``); ``avg`` mean of the
patch tokens then ``fc_norm`` (MAE fine-tuning); ``map`` SigLIP's attention-pool head (its
``pooler_output``); ``cls_avg`` class token concatenated with the mean of the patch tokens, registers
excluded (Virchow); ``token_proj`` class token through the CLIP image projection (open_clip's
``encode_image``, unnormalised).

The code: :mod:`adapters.convert` maps each source format onto timm exactly; :mod:`adapters.foundation_hub`
fetches a repo (or reads a local copy), converts it once and caches the result as safetensors.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
SOURCES = ("transformers", "open_clip", "timm", "mae")
POOLINGS = ("token", "avg", "map", "cls_avg", "token_proj")
NON_COMMERCIAL = ("cc-by-nc-4.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-4.0", "msrla", "owkin-non-commercial")


@dataclass(frozen=True)
class Preset:
    name: str
    hub_id: str | None
    source: str  # transformers | open_clip | timm | mae
    config: dict[str, Any]  # architecture in the repo's own config format (see the module docstring)
    img_size: int  # native input size (the repo's preprocessing crop)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pooling: str
    license: str
    gated: bool
    modality: str
    timm_args: dict[str, Any] = field(default_factory=dict)  # the authors' timm args the config lacks
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    weights_file: str | None = None  # mae: the checkpoint file in the repo
    get: str = ""  # where the weights come from when there is no Hub id (or a note)
    reference: str = ""  # paper / model card

    @property
    def non_commercial(self) -> bool:
        return self.license in NON_COMMERCIAL

    @property
    def url(self) -> str | None:
        return f"https://huggingface.co/{self.hub_id}" if self.hub_id else None

    def row(self) -> dict[str, Any]:
        """Every column, JSON-able (``python -m adapters backbones --json``)."""
        d = asdict(self)
        d.update(non_commercial=self.non_commercial, url=self.url, architecture=architecture_summary(self),
                 format=self.source, image_size=self.img_size,
                 normalization={"mean": list(self.mean), "std": list(self.std)})
        return d


def _dinov2(size: str) -> dict[str, Any]:
    width, depth, heads = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}[size]
    return {"model_type": "dinov2", "hidden_size": width, "num_hidden_layers": depth, "num_attention_heads": heads,
            "mlp_ratio": 4, "patch_size": 14, "image_size": 518, "layerscale_value": 1.0, "use_swiglu_ffn": False}


_VIT_L16 = {"architecture": "vit_large_patch16_224"}
_MAE_NOTE = "MAE-style .pth (model + optimizer + args), read with weights_only=True; pass it with --init-checkpoint"

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("rad-dino", "microsoft/rad-dino", "transformers", _dinov2("base"), 518, (0.5307,) * 3, (0.2583,) * 3,
           "token", "msrla", False, "chest X-ray",
           reference="Perez-Garcia et al., Nature Machine Intelligence 2025 (RAD-DINO); pooler_output = CLS"),
    Preset("biomedclip", "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "open_clip",
           {"model_cfg": {"embed_dim": 512, "vision_cfg": {"timm_model_name": "vit_base_patch16_224",
                                                           "timm_model_pretrained": False, "timm_pool": "",
                                                           "timm_proj": "linear", "image_size": 224}}},
           224, *OPENAI_CLIP, "token_proj", "mit", False, "biomedical figures (PMC-15M: radiology, histology, ...)",
           reference="Zhang et al., NEJM AI 2024 (BiomedCLIP); the image tower is a timm ViT-B/16"),
    Preset("medsiglip", "google/medsiglip-448", "transformers",
           {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
            "num_hidden_layers": 27, "num_attention_heads": 16, "patch_size": 14, "image_size": 448,
            "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vision_use_head": True},
           448, *HALF, "map", "health-ai-developer-foundations", True,
           "chest X-ray, CT/MRI slices, dermatology, ophthalmology, histopathology",
           interpolation="bilinear", reference="Google Health AI Developer Foundations (MedSigLIP, SigLIP So400m/14)"),
    Preset("uni", "MahmoodLab/UNI", "timm", {**_VIT_L16, "model_args": {"img_size": 224, "patch_size": 16}},
           224, *IMAGENET, "token", "cc-by-nc-nd-4.0", True, "histopathology (H&E)",
           timm_args={"init_values": 1e-5, "dynamic_img_size": True},
           reference="Chen et al., Nature Medicine 2024 (UNI); TRIDENT patch_encoder_models/load.py"),
    Preset("uni2-h", "MahmoodLab/UNI2-h", "timm",
           {"architecture": "vit_giant_patch14_224",
            "model_args": {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "embed_dim": 1536,
                           "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "reg_tokens": 8}},
           224, *IMAGENET, "token", "cc-by-nc-nd-4.0", True, "histopathology (H&E and IHC)",
           timm_args={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "embed_dim": 1536,
                      "mlp_ratio": 2.66667 * 2, "init_values": 1e-5, "mlp_layer": "swiglu_packed", "act_layer": "silu",
                      "no_embed_class": True, "reg_tokens": 8, "dynamic_img_size": True},
           reference="MahmoodLab/UNI2-h model card; TRIDENT patch_encoder_models/load.py"),
    Preset("virchow2", "paige-ai/Virchow2", "timm",
           {"architecture": "vit_huge_patch14_224",
            "model_args": {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "reg_tokens": 4,
                           "dynamic_img_size": True}},
           224, *IMAGENET, "cls_avg", "cc-by-nc-nd-4.0", True, "histopathology",
           timm_args={"mlp_layer": "swiglu_packed", "act_layer": "silu", "mlp_ratio": 5.3375, "reg_tokens": 4,
                      "init_values": 1e-5, "dynamic_img_size": True},
           reference="Zimmermann et al. 2024 (Virchow2); embedding = CLS ++ mean(patch tokens), registers excluded"),
    Preset("h-optimus-0", "bioptimus/H-optimus-0", "timm",
           {"architecture": "vit_giant_patch14_reg4_dinov2", "model_args": {"img_size": 224, "num_classes": 0}},
           224, (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517), "token", "apache-2.0", True,
           "histopathology", timm_args={"init_values": 1e-5, "dynamic_img_size": False},
           reference="bioptimus/H-optimus-0 model card; TRIDENT patch_encoder_models/load.py"),
    Preset("prov-gigapath", "prov-gigapath/prov-gigapath", "timm",
           {"architecture": "vit_giant_patch14_dinov2",
            "model_args": {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40,
                           "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334}},
           224, *IMAGENET, "token", "apache-2.0", True, "histopathology", crop_pct=0.875,
           reference="Xu et al., Nature 2024 (Prov-GigaPath tile encoder)"),
    Preset("phikon-v2", "owkin/phikon-v2", "transformers",
           {**_dinov2("large"), "patch_size": 16, "image_size": 224}, 224, *IMAGENET, "token",
           "owkin-non-commercial", False, "histopathology",
           reference="Filiot et al. 2024 (Phikon-v2, DINOv2 ViT-L/16); last_hidden_state[:, 0]"),
    Preset("phikon", "owkin/phikon", "transformers",
           {"model_type": "vit", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "patch_size": 16, "image_size": 224, "layer_norm_eps": 1e-12},
           224, *IMAGENET, "token", "owkin-non-commercial", False, "histopathology",
           reference="Filiot et al. 2023 (Phikon, iBOT ViT-B/16, transformers ViTModel); last_hidden_state[:, 0]"),
    Preset("retfound-cfp", "YukunZhou/RETFound_mae_natureCFP", "mae", _VIT_L16, 224, *IMAGENET, "avg",
           "cc-by-nc-4.0", True, "retina: colour fundus photographs", weights_file="RETFound_mae_natureCFP.pth",
           get=_MAE_NOTE, reference="Zhou et al., Nature 2023 (RETFound); MAE fine-tuning pools avg + fc_norm"),
    Preset("retfound-oct", "YukunZhou/RETFound_mae_natureOCT", "mae", _VIT_L16, 224, *IMAGENET, "avg",
           "cc-by-nc-4.0", True, "retina: optical coherence tomography", weights_file="RETFound_mae_natureOCT.pth",
           get=_MAE_NOTE, reference="Zhou et al., Nature 2023 (RETFound); MAE fine-tuning pools avg + fc_norm"),
    Preset("mrm", None, "mae", {"architecture": "vit_base_patch16_224"}, 224, (0.4978,) * 3, (0.2449,) * 3, "avg",
           "see source", False, "chest X-ray (MIMIC-CXR radiographs + reports)",
           get="MRM.pth from github.com/RL4M/MRM-pytorch (as MED-PEFT, RL4M/MED-PEFT); pass --init-checkpoint MRM.pth",
           reference="Zhou et al., ICLR 2023 (MRM); MED-PEFT, arXiv 2401.12215"),
    Preset("cxr-mae", None, "mae", {"architecture": "vit_base_patch16_224"}, 224, (0.4785,) * 3, (0.2834,) * 3,
           "avg", "see source", False, "chest X-ray (0.5M radiographs)",
           get="vit-b_CXR_0.5M_mae.pth from github.com/lambert-x/medical_mae; pass --init-checkpoint FILE",
           reference="Xiao et al., WACV 2023 (medical MAE); MED-PEFT, arXiv 2401.12215"),
    Preset("dinov2-base", "facebook/dinov2-base", "transformers", _dinov2("base"), 224, *IMAGENET, "token",
           "apache-2.0", False, "natural images (general-purpose baseline)", crop_pct=0.875,
           reference="Oquab et al., TMLR 2024 (DINOv2)"),
    Preset("dinov2-large", "facebook/dinov2-large", "transformers", _dinov2("large"), 224, *IMAGENET, "token",
           "apache-2.0", False, "natural images (general-purpose baseline)", crop_pct=0.875,
           reference="Oquab et al., TMLR 2024 (DINOv2)"),
    Preset("dinov2-reg-base", "facebook/dinov2-with-registers-base", "transformers",
           {**_dinov2("base"), "model_type": "dinov2_with_registers", "num_register_tokens": 4}, 224, *IMAGENET,
           "token", "apache-2.0", False, "natural images (general-purpose baseline)", crop_pct=0.875,
           reference="Darcet et al., ICLR 2024 (ViTs need registers)"),
    Preset("dinov3-vitb16", "timm/vit_base_patch16_dinov3.lvd1689m", "timm",
           {"architecture": "vit_base_patch16_dinov3"}, 256, *IMAGENET, "token", "dinov3-license", True,
           "natural images (general-purpose baseline)",
           get="timm Eva architecture (RoPE): LoRA-family (peft) methods only; hand-written ViT methods need a "
               "timm VisionTransformer", reference="Simeoni et al. 2025 (DINOv3)"),
]}


def architecture_summary(preset: Preset) -> str:
    c = preset.config
    if preset.source == "transformers":
        mt = c.get("model_type")
        return f"{mt} {c.get('hidden_size')}x{c.get('num_hidden_layers')} /{c.get('patch_size')}"
    if preset.source == "open_clip":
        return "open_clip timm:" + c["model_cfg"]["vision_cfg"].get("timm_model_name", "?")
    args = c.get("model_args", {})
    extra = {k: v for k, v in args.items() if k in ("embed_dim", "depth", "patch_size")}
    return c["architecture"] + (f" {extra}" if extra else "")


def find_preset(name: str | None) -> Preset | None:
    """The preset a backbone name means: its short name (any case), its Hub id, or ``hf-hub:`` + Hub id."""
    if not name:
        return None
    text = name.strip()
    for prefix in ("hf-hub:", "hf_hub:"):
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
    low = text.lower()
    if low in PRESETS:
        return PRESETS[low]
    for preset in PRESETS.values():
        if preset.hub_id and preset.hub_id.lower() == low:
            return preset
    return None


def is_preset(name: str | None) -> bool:
    return find_preset(name) is not None


def preset_names() -> list[str]:
    return list(PRESETS)


def access_hint(preset: Preset) -> str:
    """One line: what to do when the Hub refuses the preset's repo."""
    return (f"{preset.name} ({preset.hub_id}) is gated: accept its licence ({preset.license}) at {preset.url} "
            f"while logged in to Hugging Face, then set HF_TOKEN to a read token "
            f"(https://huggingface.co/settings/tokens), or pass --init-checkpoint DIR with a local copy of the repo")


def card_lines(name: str | None) -> list[str]:
    """Model-card lines naming the base's licence, and whether it is non-commercial or gated."""
    preset = find_preset(name)
    if preset is None:
        return []
    where = f"[{preset.hub_id}]({preset.url})" if preset.hub_id else preset.get
    lines = [f"- base model: {preset.name} ({where}; {preset.reference}); licence of the base: **{preset.license}**"]
    if preset.non_commercial:
        lines.append(f"- the base's licence ({preset.license}) is **non-commercial**: this adapter, used with it, "
                     f"is for non-commercial research only")
    if preset.gated:
        lines.append(f"- the base is **gated**: accept its licence at {preset.url} and set HF_TOKEN to download it")
    return lines


def print_backbones(as_json: bool, out=None) -> None:
    """``python -m adapters backbones [--json]``: every preset with every column."""
    import json
    import sys

    out = out or sys.stdout
    rows = [p.row() for p in PRESETS.values()]
    if as_json:
        print(json.dumps(rows, indent=2, default=list), file=out)
        return
    header = ["name", "hub_id", "source", "architecture", "img", "pooling", "license", "gated", "modality"]
    body = [[r["name"], r["hub_id"] or "(file: --init-checkpoint)", r["source"], r["architecture"],
             str(r["img_size"]), r["pooling"], r["license"] + (" (non-commercial)" if r["non_commercial"] else ""),
             "gated" if r["gated"] else "open", r["modality"]] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for line in body:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip(), file=out)
    print("\nnormalisation (mean / std) and the authors' extra timm arguments: --json. Use: --backbone NAME "
          "(downloads the Hub repo) or --backbone NAME --init-checkpoint DIR (a local copy laid out as the repo).",
          file=out)
    for p in PRESETS.values():
        if p.get:
            print(f"  {p.name}: {p.get}", file=out)
