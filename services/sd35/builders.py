"""Structurally complete SD3.5 pipelines with random weights, built here (no weights can be downloaded).

Each has both CLIP text encoders with projection, a T5 encoder, a 16-latent-channel VAE, an SD3
transformer with RMS-norm QK normalisation (Medium: MMDiT-X dual attention layers) and a
FlowMatchEuler scheduler with shift 3.0, plus real tokenizers built locally: CLIP's byte-level BPE
from CLIP's vocabulary (shipped in services/sd35/data/ with its licence), and a T5 Unigram tokenizer from a
(piece, score) list. Saved with ``save_pretrained`` so the service's ``from_pretrained`` path loads
them. Builds are deterministic (fixed seeds).

Real-size configs (``LARGE_TRANSFORMER``, ``MEDIUM_TRANSFORMER``) are used by bench/gpu_sd35.py.
"""

from __future__ import annotations

import gzip
import string
from pathlib import Path

import torch

SEED = 0

#: SD3.5 Large transformer (8.1B with encoders; 38 layers x 38 heads x 64).
LARGE_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                         num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                         pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm")
#: SD3.5 Medium transformer (MMDiT-X: dual attention in layers 0-12).
MEDIUM_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                          num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                          pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384, qk_norm="rms_norm",
                          dual_attention_layers=tuple(range(13)))
#: The SD3 VAE (16 latent channels).
SD3_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
               latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
               scaling_factor=1.5305)

_TINY_TRANSFORMER = dict(sample_size=32, patch_size=2, in_channels=16, attention_head_dim=8, num_attention_heads=4,
                         joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64, out_channels=16,
                         pos_embed_max_size=192, qk_norm="rms_norm")
TINY_VARIANTS = {
    "sd35-large-tiny": dict(_TINY_TRANSFORMER, num_layers=2),
    "sd35-large-turbo-tiny": dict(_TINY_TRANSFORMER, num_layers=2),
    # 10 layers so that skip-layer guidance on layers 7-9 has layers to skip; dual attention in 0-3.
    "sd35-medium-tiny": dict(_TINY_TRANSFORMER, num_layers=10, dual_attention_layers=(0, 1, 2, 3)),
}
_TINY_VAE = dict(SD3_VAE, block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4)


# -- tokenizers -----------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def clip_bpe_file() -> Path:
    """CLIP's BPE merges, shipped with this package (data/, from OpenAI CLIP via open-clip-torch; MIT)."""
    return Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"


def clip_tokenizer(pad_token: str = "<|endoftext|>"):  # transformers.CLIPTokenizer
    """The real CLIP tokenizer (49,408 tokens), built the way OpenAI's SimpleTokenizer builds it."""
    from transformers import CLIPTokenizer

    lines = gzip.open(clip_bpe_file()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [line for line in lines if line]
    units = list(_bytes_to_unicode().values())
    vocab_list = units + [u + "</w>" for u in units] + ["".join(m.split()) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], pad_token=pad_token,
                         model_max_length=77)


_T5_WORDS = ("a photo of the an and in on with at to from by for is are red blue green yellow black white cat dog "
             "bird car house tree flower sky sun moon city street mountain river sea beach forest portrait painting "
             "digital art style high quality detailed sharp light shadow night day golden hour close up wide shot "
             "tench goldfish shark hen ostrich robin eagle owl frog turtle lizard snake spider crab jellyfish").split()


def t5_tokenizer():  # transformers.T5TokenizerFast
    """A small T5 Unigram tokenizer: specials, common words, then single characters as fallback."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"▁{w}", -5.0 - i * 0.01) for i, w in enumerate(_T5_WORDS)]
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    pieces += [("▁", -8.0)] + [(c, -10.0) for c in chars] + [(f"▁{c}", -9.0) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


# -- pipelines ------------------------------------------------------------------------------------
def _clip_encoder(seed: int, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        projection_dim=32, max_position_embeddings=77, hidden_act="gelu", bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407))


def build_tiny_pipeline(name: str, out: Path) -> Path:
    """Build and save one tiny SD3.5 variant pipeline."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import T5Config, T5EncoderModel

    seed = SEED + list(TINY_VARIANTS).index(name) * 100
    tok1, tok2, tok3 = clip_tokenizer(), clip_tokenizer(pad_token="!"), t5_tokenizer()
    torch.manual_seed(seed + 3)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok3), d_model=64, d_kv=8, d_ff=128, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                                 eos_token_id=1))
    torch.manual_seed(seed + 4)
    transformer = SD3Transformer2DModel(**TINY_VARIANTS[name])
    torch.manual_seed(seed + 5)
    vae = AutoencoderKL(**_TINY_VAE)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=_clip_encoder(seed + 1, len(tok1)), tokenizer=tok1,
        text_encoder_2=_clip_encoder(seed + 2, len(tok2)), tokenizer_2=tok2,
        text_encoder_3=t5, tokenizer_3=tok3)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def build_lora_example(base: Path, out: Path, rank: int = 4, seed: int = 7) -> Path:
    """A small LoRA on the transformer's attention projections of ``base``, with non-zero weights so it
    visibly changes the output; saved as pytorch_lora_weights.safetensors."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import LoraConfig, get_peft_model_state_dict

    transformer = SD3Transformer2DModel.from_pretrained(base, subfolder="transformer", use_safetensors=True)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    out.mkdir(parents=True, exist_ok=True)
    StableDiffusion3Pipeline.save_lora_weights(out, transformer_lora_layers=get_peft_model_state_dict(transformer),
                                               safe_serialization=True)
    return out


BUILDERS = {name: (lambda out, n=name: build_tiny_pipeline(n, out)) for name in TINY_VARIANTS}
