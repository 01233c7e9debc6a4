"""Text-to-image (Dutt et al. 2024, Section 4.3): U-Net PEFT methods, the tiny Stable Diffusion pipeline,
training, sampling, adapters (incl. diffusers' LoRA format), the offline CLIP tokenizer, report parsing on
the real IU X-ray reports, the MIMIC-CXR layout, and FID. CPU only, tiny sizes (32 px, 2 sampling steps)."""
from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from adapters import METHODS, MethodError, apply_method, count_params, merge_method
from adapters.io import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, load_adapter, save_adapter
from trainer.config import ConfigError, TrainConfig
from trainer.data.errors import DataError

UNET_METHODS = sorted(m for m, spec in METHODS.items() if "unet" in spec.families)

# The test's own oracle of what each method trains, by parameter name.
ATTN = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$")
BLOCK = re.compile(r"(^|\.)attentions\.\d+\.")  # every tensor of a Transformer2DModel block
ATTN_PROJ = r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)"
NORM = re.compile(r"(^|\.)(norm\d*|conv_norm_out)\.(weight|bias)$")


def _bias(n: str) -> bool:
    return n.endswith(".bias")


EXPECTED = {
    "full": lambda n: True,
    "bias": _bias,
    "attention": lambda n: ATTN.search(n) is not None,
    "norm": lambda n: NORM.search(n) is not None,
    "bias_norm": lambda n: _bias(n) or NORM.search(n) is not None,
    "bias_norm_attention": lambda n: _bias(n) or NORM.search(n) is not None or ATTN.search(n) is not None,
    "attention_blocks": lambda n: BLOCK.search(n) is not None,
    "bias_norm_attention_blocks": lambda n: _bias(n) or NORM.search(n) is not None or BLOCK.search(n) is not None,
    "lora": lambda n: re.search(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.lora_[AB]\.default\.weight$", n) is not None,
    "svdiff": lambda n: n.endswith(".delta"),
    "difffit": lambda n: _bias(n) or NORM.search(n) is not None or n.endswith(".difffit_gamma"),
    # peft's tuners on the attention projections (adapters.peft_tuners)
    "boft": lambda n: re.search(ATTN_PROJ + r"\.boft_(R|s)\.default$", n) is not None,
    "loha": lambda n: re.search(ATTN_PROJ + r"\.hada_w[12]_[ab]\.default$", n) is not None,
    "lokr": lambda n: re.search(ATTN_PROJ + r"\.lokr_w[12](_[ab])?\.default$", n) is not None,
    "oft": lambda n: re.search(ATTN_PROJ + r"\.oft_R\.default\.weight$", n) is not None,
}
# learning rates that make 20 steps on one fixed batch clearly reduce the loss of the tiny random U-Net
LR = {"full": 1e-3, "attention": 3e-3, "lora": 1e-2}


@pytest.fixture(scope="module", autouse=True)
def _tokenizer_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDPEFT_CACHE", str(tmp_path_factory.mktemp("medpeft-cache")))
        yield


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine (other test runs) OpenMP
    barriers with a descheduled thread make each op wait a time slice (steps 100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, _tokenizer_cache):
    from trainer.diffusion import make_tiny_pipeline

    return make_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "pipe")


@pytest.fixture(scope="module")
def parts(tiny_dir):
    from trainer.diffusion import load_components

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_components(str(tiny_dir))


@pytest.fixture(scope="module")
def reports():
    from trainer.data.reports import iu_reports

    return iu_reports()


@pytest.fixture(scope="module")
def fixed(parts, reports):
    """One fixed batch (synthetic images, real IU report prompts) with fixed noise and timesteps."""
    from trainer.diffusion import encode_images, encode_prompts

    g = torch.Generator().manual_seed(0)
    small = torch.rand(4, 1, 8, 8, generator=g)
    pixels = torch.nn.functional.interpolate(small, size=32, mode="bilinear").expand(-1, 3, -1, -1) * 2 - 1
    prompts = [r["impression"] for r in reports if r["impression"]][:4]
    latents = encode_images(parts["vae"], pixels, torch.Generator().manual_seed(1))
    hidden = encode_prompts(parts["tokenizer"], parts["text_encoder"], prompts)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    return {"latents": latents, "hidden": hidden, "noise": noise, "t": torch.tensor([100, 300, 500, 700]),
            "prompts": prompts}


def fresh_unet(tiny_dir):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(tiny_dir), subfolder="unet").eval()


def predict(unet, parts, fixed) -> torch.Tensor:
    noisy = parts["noise_scheduler"].add_noise(fixed["latents"], fixed["noise"], fixed["t"])
    with torch.no_grad():
        return unet(noisy, fixed["t"], fixed["hidden"]).sample


def loss_of(unet, parts, fixed) -> float:
    from trainer.diffusion import diffusion_loss

    with torch.no_grad():
        return diffusion_loss(unet, parts["noise_scheduler"], fixed["latents"], fixed["hidden"], fixed["noise"],
                              fixed["t"]).item()


def train_fixed(unet, parts, fixed, steps: int, lr: float):
    from trainer.diffusion import diffusion_loss

    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    unet.train()
    for _ in range(steps):
        loss = diffusion_loss(unet, parts["noise_scheduler"], fixed["latents"], fixed["hidden"], fixed["noise"],
                              fixed["t"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return unet.eval()


def image_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


# ------------------------------------------------------------------------------------ U-Net methods
def test_unet_methods_registered():
    assert set(UNET_METHODS) == set(EXPECTED), "every U-Net method needs an oracle in EXPECTED"
    for name in ("norm", "bias_norm", "bias_norm_attention", "attention_blocks", "bias_norm_attention_blocks",
                 "svdiff", "difffit"):
        assert METHODS[name].families == ("unet",)
    for name in ("full", "bias", "attention", "lora"):  # shared with the classifiers
        assert "unet" in METHODS[name].families and {"vit", "cnn"} & set(METHODS[name].families)


@pytest.mark.parametrize("name", UNET_METHODS)
def test_exactly_intended_parameters_train(name, tiny_dir):
    unet = apply_method(fresh_unet(tiny_dir), name)
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    frozen = [n for n, p in unet.named_parameters() if not p.requires_grad]
    wrong = [n for n in trainable if not EXPECTED[name](n)]
    missed = [n for n in frozen if EXPECTED[name](n)]
    assert trainable and not wrong, f"{name} trains what it should not: {wrong[:5]}"
    assert not missed, f"{name} leaves frozen what it should train: {missed[:5]}"
    if name != "full":
        tr, tot = count_params(unet)
        assert 0 < tr < tot


@pytest.mark.parametrize("name", UNET_METHODS)
def test_identity_at_init(name, tiny_dir, parts, fixed):
    assert METHODS[name].identity_at_init
    base = fresh_unet(tiny_dir)
    expected = predict(base, parts, fixed)
    unet = apply_method(base, name)
    torch.testing.assert_close(predict(unet, parts, fixed), expected, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", UNET_METHODS)
def test_train_save_load_merge(name, tiny_dir, parts, fixed, tmp_path):
    """20 steps on one fixed batch reduce the loss on the same fixed noise; save -> load (onto a fresh base)
    gives the same noise prediction and the same image for the same seed; merge keeps the outputs and
    leaves the plain U-Net architecture."""
    from trainer.diffusion import build_pipeline, load_generation_pipeline, sample

    base_modules = [type(m).__name__ for m in fresh_unet(tiny_dir).modules()]
    base_count = sum(p.numel() for p in fresh_unet(tiny_dir).parameters())
    unet = apply_method(fresh_unet(tiny_dir), name)
    before = loss_of(unet, parts, fixed)
    train_fixed(unet, parts, fixed, steps=20, lr=LR.get(name, 1e-2))
    after = loss_of(unet, parts, fixed)
    assert after < 0.95 * before, f"{name}: loss {before:.4f} -> {after:.4f}"
    trained_pred = predict(unet, parts, fixed)

    cfg = AdapterConfig(method=name, backbone=str(tiny_dir), num_classes=0, task="generation")
    save_adapter(unet, tmp_path, cfg)
    stored = sum(t.numel() for t in load_file(str(tmp_path / WEIGHTS_NAME)).values())
    assert stored == count_params(unet)[0]
    loaded, loaded_cfg = load_adapter(tmp_path, model=fresh_unet(tiny_dir))
    assert loaded_cfg.task == "generation"
    torch.testing.assert_close(predict(loaded, parts, fixed), trained_pred, rtol=0, atol=0)

    prompt = fixed["prompts"][0]
    ours = sample(build_pipeline(parts, unet), prompt, steps=2, guidance=7.5, seed=3)
    again = sample(load_generation_pipeline(str(tiny_dir), tmp_path, merge=False), prompt, steps=2, guidance=7.5,
                   seed=3)
    assert np.array_equal(image_array(ours), image_array(again)), "save -> load changed the image"
    merged_pipe = load_generation_pipeline(str(tiny_dir), tmp_path)  # merged where exact (all U-Net methods)
    merged_img = sample(merged_pipe, prompt, steps=2, guidance=7.5, seed=3)
    assert np.abs(image_array(merged_img) - image_array(ours)).max() <= 2

    merged = merge_method(unet)
    torch.testing.assert_close(predict(merged, parts, fixed), trained_pred, rtol=1e-5, atol=1e-5)
    assert [type(m).__name__ for m in merged.modules()] == base_modules
    assert sum(p.numel() for p in merged.parameters()) == base_count


def test_lora_loads_with_stock_diffusers(tiny_dir, parts, fixed, tmp_path):
    """The adapter folder of a U-Net LoRA (rank 4, alpha 8: scaling 2 travels in the metadata) loads with a
    plain ``StableDiffusionPipeline.load_lora_weights(folder)``."""
    from diffusers import StableDiffusionPipeline

    from adapters.methods.unet_lora import DIFFUSERS_LORA_NAME
    from trainer.diffusion import build_pipeline, sample

    unet = apply_method(fresh_unet(tiny_dir), "lora", rank=4, alpha=8)
    assert unet.peft_config["default"].r == 4
    train_fixed(unet, parts, fixed, steps=5, lr=1e-2)
    save_adapter(unet, tmp_path, AdapterConfig(method="lora", backbone=str(tiny_dir), num_classes=0,
                                               task="generation"))
    assert (tmp_path / DIFFUSERS_LORA_NAME).is_file()
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_dir), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    plain_pred = predict(pipe.unet, parts, fixed)
    pipe.load_lora_weights(str(tmp_path))
    lora_pred = predict(pipe.unet, parts, fixed)
    ours = predict(unet, parts, fixed)
    assert (plain_pred - ours).abs().max() > 1e-3, "the trained LoRA should change the prediction"
    torch.testing.assert_close(lora_pred, ours, rtol=1e-5, atol=1e-5)
    prompt = fixed["prompts"][1]
    a = sample(pipe, prompt, steps=2, guidance=7.5, seed=5)
    b = sample(build_pipeline(parts, unet), prompt, steps=2, guidance=7.5, seed=5)
    assert np.abs(image_array(a) - image_array(b)).max() <= 1


def test_unet_hyper_parameters(tiny_dir):
    names = lambda u: [n for n, p in u.named_parameters() if p.requires_grad]  # noqa: E731
    qv = names(apply_method(fresh_unet(tiny_dir), "lora", targets="qv"))
    assert qv and all(re.search(r"\.(to_q|to_v)\.lora_", n) for n in qv)
    kv = apply_method(fresh_unet(tiny_dir), "svdiff", targets="cross_kv")
    assert all(re.search(r"\.attn2\.(to_k|to_v)\.delta$", n) for n in names(kv))
    with pytest.raises(MethodError, match="targets"):
        apply_method(fresh_unet(tiny_dir), "svdiff", targets="everything")
    with pytest.raises(MethodError, match="LoRA targets for a U-Net"):
        apply_method(fresh_unet(tiny_dir), "lora", targets="conv")
    with pytest.raises(MethodError, match="supports unet"):  # U-Net-only methods refuse a ViT
        from adapters import create_backbone
        from adapters.backbones import TINY_VIT

        apply_method(create_backbone(TINY_VIT, 3, pretrained=False), "svdiff")


def test_svdiff_shift_is_spectral(tiny_dir):
    """W' = U diag(relu(s + delta)) V^T: shifting every singular value to zero zeroes the weight."""
    from adapters.methods.svdiff import SVDiffLinear

    unet = apply_method(fresh_unet(tiny_dir), "svdiff")
    layer = next(m for m in unet.modules() if isinstance(m, SVDiffLinear))
    assert "svd_u" not in unet.state_dict() and any(k.endswith(".delta") for k in unet.state_dict())
    with torch.no_grad():
        u, s, vh = torch.linalg.svd(layer.weight, full_matrices=False)
        layer.delta.copy_(torch.linspace(-0.05, 0.05, len(s)))
        expected = u @ torch.diag(torch.relu(s + layer.delta)) @ vh
        torch.testing.assert_close(layer.svdiff_weight(), expected, rtol=1e-4, atol=1e-5)
        layer.delta.fill_(-1e3)
        assert layer.svdiff_weight().abs().max() < 1e-5


def test_build_unet_specs(tiny_dir):
    from diffusers import UNet2DConditionModel

    from adapters.backbones import BackboneError
    from adapters.methods.unet import build_unet

    tiny = build_unet("tiny")
    assert isinstance(tiny, UNet2DConditionModel) and not next(tiny.parameters()).is_meta
    from_dir = build_unet(str(tiny_dir))
    assert next(from_dir.parameters()).is_meta
    assert sum(p.numel() for p in from_dir.parameters()) == sum(p.numel() for p in tiny.parameters())
    with pytest.raises(BackboneError, match="no such folder|neither|Hub id"):
        build_unet("./no/such/folder")


def test_sd15_counts_match_the_paper():
    """SD 1.5's U-Net (meta device, nothing allocated): the counts Dutt et al. report for bias, norm,
    bias_norm and LoRA rank 4 (Table 4) are reproduced exactly; 'full' is 859.5M (the paper prints 85.9M)."""
    from adapters.methods.unet import build_unet

    unet = build_unet("sd15")
    assert count_params(unet)[1] == 859_520_964
    expected = {"bias": 343_684, "norm": 200_320, "bias_norm": 443_844, "bias_norm_attention": 93_955_524,
                "attention": 93_536_640, "difffit": 481_284}
    for name, count in expected.items():
        assert count_params(apply_method(unet, name))[0] == count, name
    assert count_params(apply_method(build_unet("sd15"), "svdiff"))[0] == 222_696  # every Linear/Conv2d
    assert count_params(apply_method(build_unet("sd15"), "lora", rank=4, alpha=4))[0] == 797_184  # paper: 797K


# ------------------------------------------------------------------------------------ tokenizer, reports, data
def test_offline_clip_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    from trainer.data.reports import iu_reports
    from trainer.data.tokenizer import clip_tokenizer, token_count

    tok = clip_tokenizer()
    assert type(tok).__name__ == "CLIPTokenizer" and len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.pad_token_id == 49407 and tok.model_max_length == 77
    assert token_count(tok, "a photo of a cat") == 7
    reference = SimpleTokenizer()
    texts = [r["findings"] for r in iu_reports() if r["findings"]][:200]
    texts += ["Heart size is normal!! No pneumothorax (right-sided), 3.5 cm nodule; it's stable.", "Café naïve"]
    for text in texts:
        assert tok(text).input_ids[1:-1] == reference.encode(text), text


def test_iu_reports_parse(reports):
    from trainer.data.reports import parse_report, prompt_of

    assert len(reports) == 3955
    with_impression = [r for r in reports if r["impression"]]
    assert len(with_impression) >= 3900
    assert sum(bool(r["findings"]) for r in reports) >= 3400
    assert reports[0]["impression"] == "Normal chest x-XXXX."
    # Each real report, laid out as a MIMIC-CXR free-text report, parses back to its own sections.
    for r in reports:
        text = (" FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n INDICATION:  " + (r["indication"] or "")
                + "\n\n FINDINGS: \n\n " + (r["findings"] or "") + "\n\n IMPRESSION: \n\n " + (r["impression"] or "")
                + "\n")
        assert parse_report(text) == {"findings": r["findings"], "impression": r["impression"]}, r["file"]
    assert prompt_of({"findings": "F.", "impression": None}) == "F."
    assert parse_report("FINDINGS AND IMPRESSION: Clear lungs.") == {"findings": "Clear lungs.",
                                                                    "impression": "Clear lungs."}
    assert parse_report("no sections here") == {"findings": None, "impression": None}


def _jpg(path, seed=0, size=(40, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.RandomState(seed).rand(*size) * 255).astype(np.uint8)).save(path)


def _fake_mimic(root, reports):
    """MIMIC-CXR-JPG layout: reports partly in files/, partly in a separate mimic-cxr-reports/ tree."""
    good = [r["impression"] for r in reports if r["impression"] and 10 < len(r["impression"].split()) < 30]
    long_text = " ".join([r["findings"] for r in reports if r["findings"]][:6])
    rows = [  # dicom, subject, study, view, report (None: no report file), report tree, image?
        ("d1", "10000001", "50000001", "PA", "FINDINGS: Lungs clear.\n IMPRESSION: " + good[0], "files", True),
        ("d2", "10000001", "50000001", "LATERAL", None, "files", True),
        ("d3", "11000002", "50000002", "AP", "FINDINGS: " + good[1], "reports", True),  # no impression
        ("d4", "12000003", "50000003", "PA", "IMPRESSION: " + long_text, "files", True),  # > 77 tokens
        ("d5", "13000004", "50000004", "PA", "IMPRESSION: Normal.", "files", True),  # < 7 tokens
        ("d6", "19000005", "50000005", "PA", "IMPRESSION: " + good[2], "reports", True),  # test
        ("d7", "19000006", "50000006", "AP", "IMPRESSION: " + good[3], "files", False),  # image missing
        ("d8", "20000007", "50000007", "PA", "IMPRESSION: " + good[4], "files", True),  # p20: neither split
        ("d9", "14000008", "50000008", "PA", "IMPRESSION: " + good[5], "files", True),
    ]
    lines = ["dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition"]
    for dicom, subj, study, view, text, tree, has_image in rows:
        lines.append(f"{dicom},{subj},{study},CHEST,{view}")
        rel = f"p{subj[:2]}/p{subj}/s{study}"
        if has_image:
            _jpg(root / "files" / rel / f"{dicom}.jpg", seed=int(subj) % 97)
        if text is not None:
            rep = (root / "files" if tree == "files" else root / "mimic-cxr-reports" / "files") / f"{rel}.txt"
            rep.parent.mkdir(parents=True, exist_ok=True)
            rep.write_text("                                 FINAL REPORT\n EXAMINATION: CHEST\n\n " + text + "\n")
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text("\n".join(lines) + "\n")
    return good


def test_mimic_cxr_layout(tmp_path, reports):
    from trainer.data.text2img import load_generation_data
    from trainer.data.tokenizer import clip_tokenizer

    good = _fake_mimic(tmp_path, reports)
    data = load_generation_data("mimic_cxr", tmp_path, clip_tokenizer())
    # kept: p10 PA (impression), p11 AP (findings only), p14 PA; dropped: lateral, > 77 and < 7 tokens,
    # missing image, p20 (in neither split)
    assert sorted(p.text for p in data.train) == sorted([good[0], good[1], good[5]])
    assert [p.text for p in data.test] == [good[2]]
    assert all(p.group in {f"p{i}" for i in range(10, 19)} for p in data.train)
    assert {p.path.rsplit("/", 1)[-1] for p in data.train} == {"d1.jpg", "d3.jpg", "d9.jpg"}
    notes = " ".join(data.notes)
    assert "non-frontal" in notes and "CLIP tokens" in notes and "not under files/" in notes
    half = load_generation_data("mimic_cxr", tmp_path, clip_tokenizer(), n_train=2, seed=1)
    assert len(half.train) == 2 and half.test == data.test
    assert [p.path for p in half.train] == [p.path for p in
                                            load_generation_data("mimic_cxr", tmp_path, clip_tokenizer(), n_train=2,
                                                                 seed=1).train]
    (tmp_path / "mimic-cxr-2.0.0-metadata.csv").unlink()
    with pytest.raises(DataError, match="(?s)metadata.csv.*Expected layout.*files/p10"):
        load_generation_data("mimic_cxr", tmp_path, clip_tokenizer())
    with pytest.raises(DataError, match="no option"):
        load_generation_data("mimic_cxr", tmp_path, None, colour=True)


def test_mimic_cxr_official_split_reports_beside_and_a_subset_without_p19(tmp_path, reports):
    import gzip

    from trainer.data.text2img import load_generation_data
    from trainer.data.tokenizer import clip_tokenizer

    root = tmp_path / "mimic-cxr-jpg"
    good = _fake_mimic(root, reports)
    # the separate reports tree beside the image folder, found without reports_dir
    (root / "mimic-cxr-reports").rename(tmp_path / "mimic-cxr-reports")
    p19 = load_generation_data("mimic_cxr", root, clip_tokenizer())
    assert sorted(p.text for p in p19.train) == sorted([good[0], good[1], good[5]]) and len(p19.test) == 1
    # the official split file, when present, decides (validate joins train)
    with gzip.open(root / "mimic-cxr-2.0.0-split.csv.gz", "wt") as f:
        f.write("dicom_id,study_id,subject_id,split\nd1,50000001,10000001,test\nd3,50000002,11000002,validate\n"
                "d6,50000005,19000005,train\nd9,50000008,14000008,train\n")
    official = load_generation_data("mimic_cxr", root, clip_tokenizer())
    assert [p.text for p in official.test] == [good[0]]
    assert sorted(p.text for p in official.train) == sorted([good[1], good[2], good[5]])
    assert any("official" in n for n in official.notes)
    paper = load_generation_data("mimic_cxr", root, clip_tokenizer(), split="p19")
    assert sorted(p.text for p in paper.train) == sorted(p.text for p in p19.train)
    # a subset without p19: the error names the option to set
    with pytest.raises(DataError, match="test_groups=p18"):
        load_generation_data("mimic_cxr", root, clip_tokenizer(), split="p19", test_groups=("p17",))


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory, reports):
    root = tmp_path_factory.mktemp("csv-data")
    texts = [r["impression"] for r in reports if r["impression"] and len(r["impression"]) > 20][:6]
    lines = ["path,text"]
    for i, text in enumerate(texts):
        _jpg(root / "img" / f"{i}.png", seed=i, size=(40 + i, 48))
        lines.append(f'img/{i}.png,"{text}"')
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    return root


def test_csv_pairs_and_dataset(csv_data):
    from trainer.data.text2img import PairDataset, load_generation_data
    from trainer.data.tokenizer import clip_tokenizer

    data = load_generation_data("csv", csv_data, None, test_frac=0.34, seed=0)
    assert len(data.train) == 4 and len(data.test) == 2
    ds = PairDataset(data.train, clip_tokenizer(), resolution=32)
    item = ds[0]
    x = item["pixel_values"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert -1 <= x.min() and x.max() <= 1 and x.max() - x.min() > 0.5
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert item["input_ids"].shape == (77,) and item["input_ids"][0] == 49406
    with pytest.raises(DataError, match="path,text"):
        (csv_data / "bad").mkdir()
        (csv_data / "bad" / "x.csv").write_text("file,caption\na.png,b\n")
        load_generation_data("csv", csv_data / "bad", None)


# ------------------------------------------------------------------------------------ FID
def _smooth_images(n, seed, size=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 6, 6, generator=g)
    return (torch.nn.functional.interpolate(x, size=size, mode="bilinear") * 255).round().to(torch.uint8)


@pytest.mark.slow
def test_fid_network_and_properties():
    from trainer.loops.fid import InceptionFeatures, compute_fid, feature_extractor

    net = feature_extractor("cpu")
    assert isinstance(net, InceptionFeatures)
    names = [n for n, _ in net.net.net.layers.named_children()]
    assert names[:3] == ["conv", "conv_1", "conv_2"] and names[-2:] == ["mixed_10", "pool2"]
    state = net.net.state_dict()
    assert len(state) == 376 and sum(v.numel() for v in state.values()) == 21_802_784
    # NVIDIA's StyleGAN FID Inception (TF inception-2015-12-05): conv + scale-free batch norm per layer, no classifier
    shapes = {"net.layers.conv.weight": (32, 3, 3, 3), "net.layers.conv_4.weight": (192, 80, 3, 3),
              "net.layers.mixed_10.conv.weight": (320, 2048, 1, 1), "net.layers.mixed_10.conv.beta": (320,),
              "net.layers.mixed_10.tower_1_mixed_conv_1.weight": (384, 384, 3, 1)}
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert not any("output" in k or k.endswith(".gamma") for k in state)
    real = _smooth_images(4, 0)
    feats = net(real[:, :, :50, :61])  # any size, uint8
    assert feats.shape == (4, 2048) and torch.isfinite(feats).all()
    torch.testing.assert_close(net(real.float() / 255), net(real), rtol=1e-4, atol=1e-4)  # float [0,1] == uint8
    assert abs(compute_fid(real, real, device="cpu")) < 1e-3
    noise = torch.randint(0, 256, (4, 3, 64, 64), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    assert compute_fid(real, noise, device="cpu") > 100
    with pytest.raises(ValueError, match="at least 2"):
        compute_fid(real[:1], real, device="cpu")


def test_small_set_fid_equals_torchmetrics():
    """The fast small-set compute() equals torchmetrics' own formula (checked on 64-d features)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    from trainer.loops.fid import fid_metric

    class Features(torch.nn.Module):
        num_features = 64

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(48, 64, generator=torch.Generator().manual_seed(0)))

        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1) @ self.w

    metric = fid_metric("cpu", feature=Features())
    metric.update(_smooth_images(10, 0, 16), real=True)
    metric.update(_smooth_images(12, 1, 16), real=False)
    fast, reference = metric.compute(), FrechetInceptionDistance.compute(metric)
    assert reference > 0.01
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


def test_fid_command_line(tmp_path, capsys):
    from trainer.loops.fid import main

    for kind, seed in (("real", 0), ("fake", 3)):
        (tmp_path / kind).mkdir()
        for i, img in enumerate(_smooth_images(2, seed)):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / kind / f"{i}.png")
    assert main([str(tmp_path / "real"), str(tmp_path / "fake"), "--batch-size", "2", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert float(captured.out.strip()) > 0
    assert "warning: FID from 2 real and 2 generated images" in captured.err
    assert main([str(tmp_path / "real"), str(tmp_path / "nothing")]) == 2


# ------------------------------------------------------------------------------------ sampling, bad input
def test_sampling_and_bad_input(tiny_dir, tmp_path):
    from trainer.diffusion import GenerationError, load_generation_pipeline, sample

    pipe = load_generation_pipeline(str(tiny_dir))
    a = sample(pipe, "No acute cardiopulmonary abnormality.", steps=2, guidance=7.5, seed=0)
    b = sample(pipe, "No acute cardiopulmonary abnormality.", steps=2, guidance=7.5, seed=0)
    c = sample(pipe, "No acute cardiopulmonary abnormality.", steps=2, guidance=7.5, seed=1)
    assert a.size == (32, 32) and np.array_equal(image_array(a), image_array(b))
    assert not np.array_equal(image_array(a), image_array(c))
    for empty in ("", "   \n"):
        with pytest.raises(ValueError, match="prompt is empty"):
            sample(pipe, empty)
    long_prompt = " ".join(["bilateral pleural effusions with bibasilar atelectasis"] * 20)
    with pytest.warns(UserWarning, match="truncated"):
        img = sample(pipe, long_prompt, steps=2, seed=0)
    assert img.size == (32, 32)
    with pytest.raises(GenerationError, match="no base model.*Hub id.*local folder"):
        load_generation_pipeline("")
    with pytest.raises(GenerationError, match="not found.*offline it must be a local folder"):
        load_generation_pipeline(str(tmp_path / "missing"))
    with pytest.raises(GenerationError, match="not a diffusers"):
        load_generation_pipeline(str(tmp_path))
    cls_adapter = tmp_path / "cls"
    cls_adapter.mkdir()
    (cls_adapter / CONFIG_NAME).write_text(json.dumps({"method": "bias", "backbone": "resnet50", "num_classes": 3}))
    with pytest.raises(GenerationError, match="not a text-to-image"):
        load_generation_pipeline(str(tiny_dir), cls_adapter)


def test_folder_without_tokenizer_uses_offline_clip(tiny_dir, tmp_path):
    import shutil

    from trainer.diffusion import load_generation_pipeline, sample

    copy_dir = tmp_path / "no-tok"
    shutil.copytree(tiny_dir, copy_dir)
    shutil.rmtree(copy_dir / "tokenizer")
    with pytest.warns(UserWarning, match="offline CLIP tokenizer"):
        pipe = load_generation_pipeline(str(copy_dir))
    ref = load_generation_pipeline(str(tiny_dir))
    prompt = "Stable cardiomegaly."
    assert np.array_equal(image_array(sample(pipe, prompt, steps=2, seed=4)),
                          image_array(sample(ref, prompt, steps=2, seed=4)))


# ------------------------------------------------------------------------------------ run(cfg) end to end
def _cfg(tiny_dir, csv_data, out, **kw) -> TrainConfig:
    base = dict(task="generation", method="lora", dataset="csv", data_dir=str(csv_data), base_model=str(tiny_dir),
                resolution=32, max_train_steps=4, validation_steps=2, batch_size=2, num_inference_steps=2,
                fid_samples=0, num_workers=0, output_dir=str(out), test_frac=0.34, lr=1e-3, seeds=[0])
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
def test_run_end_to_end_and_resume(tiny_dir, csv_data, tmp_path):
    from adapters.methods.unet_lora import DIFFUSERS_LORA_NAME
    from trainer.loops.generate import run

    out = tmp_path / "run"
    results = run(_cfg(tiny_dir, csv_data, out, fid_samples=2, hparams={"rank": 4, "alpha": 4}, keep_checkpoints=True))
    assert results["kind"] == "medpeft-run" and results["task"] == "generation" and results["method"] == "lora"
    assert results["backbone"] == "stable_diffusion_unet" and results["n_train"] == 4
    fid = results["metrics"]["test"]["fid"]
    assert fid["values"] and np.isfinite(fid["mean"]) and fid["std"] == 0.0
    sizes = results["per_seed"][0]["fid_samples"]  # both sample sizes, and the small-sample warning
    assert sizes["real"] == 2 and sizes["generated"] == 2 and "below 2,048" in sizes["warning"]
    assert results["trainable_params"] < results["total_params"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["metrics"] == results["metrics"] and saved["config"]["method"] == "lora"
    for rel in ("adapter/medpeft.json", "adapter/adapter_model.safetensors", f"adapter/{DIFFUSERS_LORA_NAME}",
                "adapter/README.md", "validation/step_0002_0.png", "validation/step_0004_1.png",
                "checkpoint/adapter.safetensors", "checkpoint/trainer_state.pt", "config.yaml",
                "fid/generated/00001.png"):
        assert (out / rel).is_file(), rel
    acfg = json.loads((out / "adapter" / CONFIG_NAME).read_text())
    assert acfg["task"] == "generation" and acfg["metrics"]["test_fid"] == fid["mean"]
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 4
    with pytest.raises(ConfigError, match="already holds a finished run"):
        run(_cfg(tiny_dir, csv_data, out))

    # --resume continues from step 4 to 6 and matches an uninterrupted 6-step run exactly.
    run(_cfg(tiny_dir, csv_data, out, max_train_steps=6, resume=True, hparams={"rank": 4, "alpha": 4},
             keep_checkpoints=True))
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 6
    assert (out / "validation" / "step_0006_0.png").is_file()
    straight = tmp_path / "straight"
    run(_cfg(tiny_dir, csv_data, straight, max_train_steps=6, hparams={"rank": 4, "alpha": 4}))
    a = load_file(str(out / "adapter" / WEIGHTS_NAME))
    b = load_file(str(straight / "adapter" / WEIGHTS_NAME))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.mark.slow
def test_run_mixed_precision_ema_checkpointing(tiny_dir, csv_data, tmp_path):
    """bf16 autocast with fp32 trainable tensors, EMA and gradient checkpointing (svdiff)."""
    from trainer.diffusion import load_generation_pipeline, sample
    from trainer.loops.generate import run

    out = tmp_path / "bf16"
    results = run(_cfg(tiny_dir, csv_data, out, method="svdiff", mixed_precision="bf16", ema=True,
                       gradient_checkpointing=True, max_train_steps=2, lr=1e-2))
    assert results["per_seed"][0]["steps"] == 2 and np.isfinite(results["per_seed"][0]["final_loss"])
    pipe = load_generation_pipeline(str(tiny_dir), out / "adapter")
    assert sample(pipe, "Clear lungs.", steps=2, seed=0).size == (32, 32)


def test_run_bad_config(tiny_dir, csv_data, tmp_path):
    from trainer.loops.generate import run

    with pytest.raises(ConfigError, match="no base model"):
        run(_cfg(tiny_dir, csv_data, tmp_path / "a", base_model=None))
    with pytest.raises(ConfigError, match="does not apply to the (Stable Diffusion )?U-Net"):
        run(_cfg(tiny_dir, csv_data, tmp_path / "b", method="ssf"))
    with pytest.raises(DataError, match="no CSV"):
        run(_cfg(tiny_dir, csv_data, tmp_path / "c", data_dir=str(tmp_path / "nowhere")))
