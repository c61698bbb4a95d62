"""Offline demo models: the study's three architectures with tiny configs and RANDOM weights.

They exist so the app, the command line and the tests run where the Hugging Face Hub is out of
reach. Each one is a real LlavaNextForConditionalGeneration, LlavaForConditionalGeneration or
Gemma3ForConditionalGeneration with the real processor classes (AnyRes tiling, CLIP crop, SigLIP
pooling, chat templates), saved with save_pretrained and then loaded through the same
from_pretrained path as the real models. Their answers are noise.

The tokenizer is a small byte-level BPE trained here on an in-code corpus (the study's prompts and
everyday radiology words) so that random output decodes to readable words.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from explorer.catalog.presets import ModelSpec

# Bump when the build below changes in a way that changes the saved files.
BUILD_VERSION = 1
MARKER_FILE = "demo_model.json"
RANDOM_WEIGHTS_NOTE = "random weights, output is noise"
CACHE_ENV = "EXPLORER_CACHE"
# Seeding is process-global in torch: two threads building at once would interleave random draws.
_BUILD_LOCK = threading.Lock()

# AnyRes grid of llava-v1.6-mistral-7b-hf in tiles: [[336,672],[672,336],[672,672],[1008,336],[336,1008]].
LLAVA_NEXT_GRID = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))

# CLIP and SigLIP normalisation constants, as the real image processors ship them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class DemoSize:
    """Scale knobs of a demo model. Image geometry sets the image-token count; widths set the cost."""

    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 128
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    vision_intermediate: int = 64
    llava_image_size: int = 56  # CLIP crop / AnyRes tile (real: 336)
    llava_patch_size: int = 14
    llava_grid: tuple[tuple[int, int], ...] = LLAVA_NEXT_GRID
    gemma_image_size: int = 56  # SigLIP input (real: 896)
    gemma_patch_size: int = 14
    gemma_image_tokens: int = 4  # after average pooling (real: 256); must be a square
    vocab_size: int = 2000

    @classmethod
    def tiny(cls) -> "DemoSize":
        """Fast on 2 CPU cores; the processors still tile, crop and pool for real."""
        return cls()

    @classmethod
    def study_shapes(cls, text_hidden: int = 64, text_layers: int = 2) -> "DemoSize":
        """The real models' image geometry and token counts (576 / AnyRes / 256) with small widths."""
        return cls(
            text_hidden=text_hidden,
            text_layers=text_layers,
            text_intermediate=2 * text_hidden,
            llava_image_size=336,
            llava_patch_size=14,
            gemma_image_size=896,
            gemma_patch_size=14,
            gemma_image_tokens=256,
        )

    def __post_init__(self) -> None:
        for name in ("llava", "gemma"):
            image, patch = getattr(self, f"{name}_image_size"), getattr(self, f"{name}_patch_size")
            if image % patch:
                raise ValueError(f"{name}_image_size {image} is not a multiple of {name}_patch_size {patch}")
        side = round(self.gemma_image_tokens**0.5)
        patches = self.gemma_image_size // self.gemma_patch_size
        if side * side != self.gemma_image_tokens or patches % side:
            raise ValueError("gemma_image_tokens must be a square whose side divides the SigLIP patch grid")
        if self.text_hidden % self.text_heads or self.text_heads % self.text_kv_heads:
            raise ValueError("text_hidden must divide by text_heads, and text_heads by text_kv_heads")

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- tokenizer
# The corpus the BPE is trained on: the study's prompts, its answer vocabulary and plain radiology,
# dermatology and pathology words. Whole words become single tokens, so noise reads as words.
_CORPUS = """
Is this image abnormal? Is this image normal? Is this skin lesion abnormal? Is this skin lesion normal?
Does this image contain evidence of tumors? Does this image contain evidence of pneumonia?
Does this image contain evidence of malignant skin cancer? Does this image contain evidence of invasive ductal carcinoma?
Consider signs of irregular masses and other atypical morphology.
Consider signs of consolidation, air bronchograms, and silhouettes.
Consider signs of irregular borders, asymmetry, uneven pigmentation, and other atypical morphology.
Consider signs of irregular masses and other atypical cell morphology.
Which does this image show? Choose one answer.
A) Tumor B) No tumor A) Pneumonia B) No pneumonia A) Malignant B) Benign A) Carcinoma B) No carcinoma
Answer in one word. Yes. No. Yes, No, yes no Normal Abnormal normal abnormal
Describe this image in great detail and pay attention to any relevant pixels.
Describe this image in great detail and pay attention to any relevant features.
Imagine a physician will use your description to diagnose brain cancer.
Imagine a physician will use your description to diagnose pneumonia.
Imagine a physician will use your description to diagnose skin cancer.
Imagine a pathologist will use your description to diagnose invasive ductal carcinoma.
You are a careful radiologist. You are a careful clinician. You are a careful pathologist.
Given the following brain MRI image description, answer ONLY whether a brain tumor is present.
Given the following chest X-ray description, answer ONLY whether pneumonia is present.
Given the following skin lesion description, answer ONLY whether skin cancer is present.
Given the following histopathology image description, answer ONLY whether invasive ductal carcinoma is present.
Return a single word: Yes or No. Task: Decide if disease is present. Output must be Yes or No. Description:
USER: ASSISTANT: [INST] [/INST] user model
The chest radiograph shows clear lungs with no focal consolidation, effusion or pneumothorax.
The heart size is normal. The mediastinum is unremarkable. There is a patchy opacity in the right lower lobe.
Findings are consistent with pneumonia. There is no evidence of acute cardiopulmonary disease.
The frontal view shows the left and right lung fields, the diaphragm, the costophrenic angles and the ribs.
The axial MRI slice shows the brain with white matter, grey matter, ventricles and a cortex.
A well defined mass with surrounding edema and contrast enhancement is seen in the frontal lobe.
The midline is preserved. There is no hemorrhage. The tissue appears homogeneous and symmetric.
The dermatoscopic image shows a pigmented lesion with a regular network and a smooth border.
The lesion is asymmetric with irregular borders, several colors and an atypical vascular pattern.
The histopathology patch shows breast tissue with glands, stroma, nuclei and cytoplasm stained pink and purple.
Tumor cells infiltrate the stroma in sheets and nests with pleomorphic nuclei and frequent mitoses.
The sample appears benign with no atypia. The appearance suggests a malignant process.
I cannot determine a diagnosis from this image alone. Please consult a qualified doctor.
It is difficult to say. The image quality is limited. This may be normal or abnormal.
Based on the image, the answer is yes. Based on the image, the answer is no.
patient scan view finding impression opacity density lesion nodule margin tissue region area signal
left right upper lower middle central peripheral diffuse focal bilateral mild moderate severe small large
bright dark round oval irregular smooth sharp blurred likely possible probable suggestive consistent
infection inflammation fluid air bone soft structure pattern texture contrast enhancement artifact
lung heart brain skin breast cell nucleus gland duct vessel border color pixel feature detail
""".split("\n")

_LLAVA_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
_GEMMA_SPECIALS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)

# Mistral-instruct style, as llava-hf/llava-v1.6-mistral-7b-hf renders it: "[INST] <image>\n{text} [/INST]".
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<<SYS>>\\n' + message['content'][0]['text'] + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{ item['text'] }}{% endfor %}"
    "{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> ' }}"
    "{% else %}{{ raise_exception('Only system, user and assistant roles are supported') }}{% endif %}"
    "{% endfor %}"
)

# Gemma's turn format: <bos><start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = (messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text']) + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def _train_tokenizer(family: str, vocab_size: int):
    """A byte-level BPE (every string encodes) wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = _LLAVA_SPECIALS if family == "llava" else _GEMMA_SPECIALS
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator([line for line in _CORPUS if line.strip()] * 3, trainer)
    bos = "<s>" if family == "llava" else "<bos>"
    raw.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, raw.token_to_id(bos))]
    )
    if family == "llava":
        return PreTrainedTokenizerFast(
            tokenizer_object=raw,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            extra_special_tokens={"image_token": "<image>"},
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
            "sot_token": "<start_of_turn>",
            "eot_token": "<end_of_turn>",
        },
    )


# ---------------------------------------------------------------- configs
def _mistral_config(size: DemoSize, vocab_size: int, tok):
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=vocab_size,
        hidden_size=size.text_hidden,
        intermediate_size=size.text_intermediate,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        num_key_value_heads=size.text_kv_heads,
        max_position_embeddings=32768,
        sliding_window=None,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )


def _clip_vision_config(size: DemoSize):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_intermediate,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=size.llava_image_size,
        patch_size=size.llava_patch_size,
        projection_dim=size.vision_hidden,
    )


def _gemma_text_config(size: DemoSize, vocab_size: int, tok):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=size.text_hidden,
        intermediate_size=size.text_intermediate,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        num_key_value_heads=size.text_kv_heads,
        head_dim=size.text_hidden // size.text_heads,
        max_position_embeddings=32768,
        sliding_window=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,  # untied so the output head can prefer word tokens (see _shape_output_head)
    )


def _build_llava_next(size: DemoSize, tok):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tile = size.llava_image_size
    pinpoints = [[rows * tile, cols * tile] for rows, cols in size.llava_grid]
    config = LlavaNextConfig(
        vision_config=_clip_vision_config(size),
        text_config=_mistral_config(size, len(tok), tok),
        image_token_index=tok.image_token_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(tile // size.llava_patch_size) ** 2,
        tie_word_embeddings=False,
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": tile},
        crop_size={"height": tile, "width": tile},
        image_grid_pinpoints=pinpoints,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_pad=True,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=size.llava_patch_size,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    return LlavaNextForConditionalGeneration(config), processor


def _build_llava(size: DemoSize, tok):
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tile = size.llava_image_size
    config = LlavaConfig(
        vision_config=_clip_vision_config(size),
        text_config=_mistral_config(size, len(tok), tok),
        image_token_index=tok.image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(tile // size.llava_patch_size) ** 2,
        tie_word_embeddings=False,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": tile},
        crop_size={"height": tile, "width": tile},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    # Like the HF conversions of LLaVA-Med: no patch size, no feature strategy, no chat template.
    # The backend fills them from the model config (the study's "fix_patch_size").
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=None,
        vision_feature_select_strategy=None,
        image_token="<image>",
        num_additional_image_tokens=0,
    )
    return LlavaForConditionalGeneration(config), processor


def _build_gemma3(size: DemoSize, tok):
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, SiglipVisionConfig
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    vision = SiglipVisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_intermediate,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=size.gemma_image_size,
        patch_size=size.gemma_patch_size,
        vision_use_head=False,
    )
    config = Gemma3Config(
        text_config=_gemma_text_config(size, len(tok), tok),
        vision_config=vision,
        mm_tokens_per_image=size.gemma_image_tokens,
        boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.eoi_token_id,
        image_token_index=tok.image_token_id,
        tie_word_embeddings=False,
    )
    side = size.gemma_image_size
    image_processor = Gemma3ImageProcessorPil(
        size={"height": side, "width": side},
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        do_pan_and_scan=False,
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        chat_template=GEMMA_CHAT_TEMPLATE,
        image_seq_length=size.gemma_image_tokens,
    )
    model = Gemma3ForConditionalGeneration(config)
    # Gemma3 initialises the image projection to zeros, which would make every image look the same;
    # a trained model's projection is not zero, so give the demo a random one.
    projector = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        projector.normal_(0.0, size.vision_hidden**-0.5)
    return model, processor


def _build_text(size: DemoSize, tok):
    from transformers import Gemma3ForCausalLM

    tok.chat_template = GEMMA_CHAT_TEMPLATE
    return Gemma3ForCausalLM(_gemma_text_config(size, len(tok), tok)), tok


_BUILDERS = {
    "llava_next": ("llava", _build_llava_next),
    "llava": ("llava", _build_llava),
    "gemma3": ("gemma", _build_gemma3),
    "text": ("gemma", _build_text),
}


def _corpus_words() -> set[str]:
    import re

    return set(re.findall(r"[A-Za-z][A-Za-z\-]*", " ".join(_CORPUS)))


def _shape_output_head(model, tok) -> None:
    """Shrink the output rows of tokens that are not whole corpus words, so random logits mostly
    pick words and a random model's output reads as (meaningless) words, not byte fragments.

    Nothing is forbidden: every token keeps a non-zero row, fragments and special tokens just win
    the argmax rarely.
    """
    import torch

    words = _corpus_words()
    special = set(tok.all_special_ids)
    scale = torch.full((len(tok),), 0.1)
    for token_id in range(len(tok)):
        text = tok.decode([token_id])
        if token_id not in special and text.startswith(" ") and text[1:] in words:
            scale[token_id] = 1.0
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        head.mul_(scale.to(head.dtype)[:, None])


# ---------------------------------------------------------------- cache
def cache_root() -> Path:
    base = os.environ.get(CACHE_ENV)
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "medvlm-explorer") / "demo-models"


def config_hash(kind: str, seed: int, size: DemoSize) -> str:
    """What determines the built files: builder version, architecture, seed, sizes and corpus."""
    blob = json.dumps(
        {"build": BUILD_VERSION, "kind": kind, "seed": seed, "size": size.as_dict(), "corpus": _CORPUS},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def is_demo_dir(path: str | Path) -> bool:
    return (Path(path) / MARKER_FILE).is_file()


def read_marker(path: str | Path) -> Optional[dict]:
    try:
        return json.loads((Path(path) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _model_card(name: str, kind: str, seed: int, size: DemoSize) -> str:
    return (
        f"# {name}: offline demo model ({RANDOM_WEIGHTS_NOTE})\n\n"
        f"A `{kind}` model built by explorer/models/demo.py with tiny sizes and RANDOM weights (seed {seed}).\n"
        "It runs the same transformers code path as the study's models, but its answers are noise:\n"
        "never read them as a medical or scientific result.\n\n"
        f"Sizes: `{json.dumps(size.as_dict())}`\n"
    )


def _build_into(folder: Path, kind: str, seed: int, size: DemoSize, name: str, digest: str) -> None:
    import torch
    import transformers

    family, builder = _BUILDERS[kind]
    tok = _train_tokenizer(family, size.vocab_size)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, processor = builder(size, tok)
    _shape_output_head(model, tok)
    model.eval()
    eos = [tok.eos_token_id] + ([tok.convert_tokens_to_ids("<end_of_turn>")] if family == "gemma" else [])
    for cfg in (model.config, getattr(model.config, "text_config", None)):
        if cfg is not None:
            cfg.demo_random_weights = True  # marker inside config.json too
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = eos if len(eos) > 1 else eos[0]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.do_sample = False
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "README.md").write_text(_model_card(name, kind, seed, size), encoding="utf-8")
    marker = {
        "note": RANDOM_WEIGHTS_NOTE,
        "random_weights": True,
        "name": name,
        "kind": kind,
        "seed": seed,
        "config_hash": digest,
        "size": size.as_dict(),
        "build_version": BUILD_VERSION,
        "built_with_transformers": transformers.__version__,
    }
    # Written last: its presence means the folder is complete.
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2), encoding="utf-8")


def _ensure(name: str, kind: str, seed: int, size: DemoSize, cache_dir: Optional[Path]) -> Path:
    digest = config_hash(kind, seed, size)
    root = Path(cache_dir) if cache_dir else cache_root()
    final = root / f"{name}-{digest}"
    if is_demo_dir(final):
        return final
    with _BUILD_LOCK:
        if is_demo_dir(final):  # another thread finished it while this one waited
            return final
        root.mkdir(parents=True, exist_ok=True)
        # Build beside the final folder, then rename: a reader never sees half a model, and when two
        # processes build at once the loser's rename fails and it uses the winner's identical copy.
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{digest}-", dir=root))
        try:
            _build_into(tmp, kind, seed, size, name, digest)
            if final.exists() and not is_demo_dir(final):
                shutil.rmtree(final, ignore_errors=True)  # debris of a build that died mid-way
            try:
                os.rename(tmp, final)
            except OSError:
                if not is_demo_dir(final):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_demo_model(spec: ModelSpec, size: DemoSize = DemoSize.tiny(), cache_dir: Optional[Path] = None) -> Path:
    """The folder of the demo model for `spec`, built on first use (seeded by spec.demo_seed)."""
    if not spec.is_demo:
        raise ValueError(f"model {spec.alias!r} is not a demo model (it has no demo_of)")
    return _ensure(spec.alias, spec.architecture, spec.demo_seed, size, cache_dir)


def ensure_demo_text_model(
    seed: int = 0, size: DemoSize = DemoSize.tiny(), cache_dir: Optional[Path] = None, name: str = "demo-text"
) -> Path:
    """A tiny random Gemma3ForCausalLM with the demo tokenizer and Gemma's chat template (judge, diagnosis)."""
    return _ensure(name, "text", seed, size, cache_dir)
